"""Using a trained model on raw text: classifier probabilities, the fwd+bwd ensemble, LM
generation, the serving export and the prediction CLI's file handling. `ulmfit_jax.api` is
the public surface above; these modules do the work and never import it."""
