"""What a task is: GLUE tasks (``glue``), image tasks and their augmentation views (``images``), one lookup over both (``registry``)."""
