"""What a task is: GLUE tasks (``glue``), image tasks and their views (``images``), one lookup over both
(``registry``), and the data every stage reads: tokenised text (``text_data``, ``augmented``), images in memory
(``image_data``)."""
