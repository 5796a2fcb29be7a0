"""Models by name: the family registry (``families``: the CIFAR ResNets, Hugging Face classifiers, torchvision's),
one factory over it (``factory.build``, ``factory.load_trained``), the architectures (``resnet_cifar``, ``bert``,
``tinybert``, ``torchvision_models``); ``inference`` runs a model over a split as teachers and students do."""
