"""The student stage: one run and its record (``run``), the recipe's view of it (``context``), the teacher
targets from the store or online (``targets``), the data checked against the store (``data``), and the
recipes per method and modality (``recipes``)."""
