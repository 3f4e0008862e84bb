"""Optimisation: fastai's Adam with layer groups (an optax transformation), discriminative
LRs and freezing, STLR / one-cycle schedules, and the LR finder."""
