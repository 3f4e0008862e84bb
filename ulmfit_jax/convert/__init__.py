"""fastai interop: fastai's checkpoint files and key layouts, and a safe itos unpickler.

The only layer that imports torch (lazily, when a `.pth` file is read or written).
"""
