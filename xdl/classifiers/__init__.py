"""Classifiers: linear (Softmax, LinearSVM), fully-connected and convolutional
networks, and ``load_model`` to rebuild any saved network."""
from xdl.classifiers.base import load_model
from xdl.classifiers.linear_classifier import LinearClassifier, LinearSVM, Softmax
from xdl.classifiers.fc_net import FullyConnectedNet, TwoLayerNet
from xdl.classifiers.cnn import ThreeLayerConvNet

__all__ = ["LinearClassifier", "LinearSVM", "Softmax", "TwoLayerNet", "FullyConnectedNet",
           "ThreeLayerConvNet", "load_model"]
