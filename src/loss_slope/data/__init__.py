"""Datasets (offline digits demo, CIFAR-10) and the device-resident batch iterators."""
