"""TinyBERT's data augmentation, a stage of its own between the tasks and the teachers: ``run`` augments a GLUE
task's training file (resumable, by shards), ``candidates`` proposes each word's replacements (a BERT masked
language model for single-piece words, GloVe neighbours for the rest). ``tasks.augmented`` reads the result."""
