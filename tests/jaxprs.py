"""Reading what a traced function will run: the equations of its jaxpr."""
from __future__ import annotations

from typing import Any

import jax
import jax.extend.core


def equations(fn: Any, *args: Any, primitive: str) -> list:
    """Every `primitive` equation in `fn(*args)`'s jaxpr, nested jaxprs (scan bodies, custom
    VJPs) included."""
    found = []

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == primitive:
                found.append(eqn)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jax.make_jaxpr(fn)(*args).jaxpr)
    return found
