"""The foundation every stage stands on, importing no stage: errors and exit statuses, typed settings, files written
safely, hashing, the training loop and its checkpoints, the loss formulas, optimisers, devices and seeds, energy,
progress."""
