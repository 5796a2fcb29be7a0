"""Model definitions: CIFAR ResNets, BERT loading and layer maps."""
