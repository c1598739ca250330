"""crnnfw's recipes, installed with the package as ``crnnfw.configs``: ``crnnfw run mnist_crnn``
runs ``configs/mnist_crnn.yaml`` from any folder, and ``crnnfw config --example NAME`` prints
one to start your own from."""
