"""The bundled models: their architectures, committed weights and cards, and the MNIST copy
they were trained on."""
