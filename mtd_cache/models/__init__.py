"""Models: one factory (``factory.build``, ``factory.load_trained``) over CIFAR ResNets (``resnet_cifar``) and the
BERT family (``bert``, ``tinybert``); ``inference`` runs a model over a split as teachers and students do."""
