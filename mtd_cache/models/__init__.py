"""Model definitions: CIFAR ResNets (``resnet_cifar``), BERT loading and layer maps (``bert``)."""
