"""The commands (click), thin: each parses its options, turns bad input into one line and exit status 2, and calls
one function of a stage. ``cache`` is ``mtd-cache`` (teachers, dump, augment, import, inspect), ``student`` is
``mtd-train``, ``sweep`` ``mtd-sweep``, ``report`` ``mtd-report``; ``common`` holds what they share."""
