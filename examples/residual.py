"""A small residual network as a builder you can copy: ``build(hp, input_shape, num_classes)``.

    python -m fmnist_exp custom --model examples/residual.py:build --hp '{width: 32, blocks: 1}'
    mlflow run . -e tune -P study=residual          # searches width and blocks beside the learning rate

The platform calls ``build`` with ``hp``, a read-only mapping of this network's own parameters (the
study file's ``fixed`` and searched values that are not the platform's: here width, blocks, dropout
and l2; learning rate, epochs, batch size and augmentation are the platform's), ``input_shape`` as
(height, width, channels) and the number of classes. The model takes raw pixels 0-255 and scales
them itself; it ends in logits (no softmax), which the platform serves as probabilities.
"""

import keras
from keras import layers, regularizers


def _conv_bn(x, width: int, reg, stride: int = 1):
    x = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    return layers.BatchNormalization(momentum=0.9)(x)


def _block(x, width: int, reg, stride: int):
    """Two 3x3 convolutions around an identity shortcut (a 1x1 projection where the shape changes)."""
    shortcut = x
    h = layers.ReLU()(_conv_bn(x, width, reg, stride))
    h = _conv_bn(h, width, reg)
    if stride != 1 or shortcut.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(shortcut)
        shortcut = layers.BatchNormalization(momentum=0.9)(shortcut)
    return layers.ReLU()(layers.Add()([h, shortcut]))


def build(hp, input_shape, num_classes):
    width = int(hp.get("width", 32))  # channels of the first stage; each later stage doubles them
    blocks = int(hp.get("blocks", 1))  # residual blocks per stage
    dropout = float(hp.get("dropout", 0.2))
    reg = regularizers.L2(float(hp.get("l2", 1e-4)))
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.ReLU()(_conv_bn(x, width, reg))
    if min(input_shape[:2]) >= 16:  # 28x28: the stages work at 14x14 and 7x7 (8x8 digits keep their pixels)
        x = layers.MaxPooling2D()(x)
    for stage in range(2):
        for b in range(blocks):
            x = _block(x, width * 2**stage, reg, stride=2 if stage and not b else 1)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg)(x)  # logits
    return keras.Model(inputs, outputs, name="residual")
