"""The AWD-LSTM in Flax NNX: config, LSTM, AWD dropouts, encoder, LM head, classifier.

Depends on jax and flax only: no torch, ml_collections or tensorflow (tested in
tests/test_layers.py).
"""
