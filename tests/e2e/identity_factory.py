"""Tasks made by a factory, each under its own name (issue 11, item 1).

Without ``name=`` the two would share ``identity_factory:make_scaler.<locals>.scale``
and the second definition would be refused.
"""

from fleetflow import task


def make_scaler(factor: int):
    @task(name=f"{__name__}:scale_by_{factor}")
    def scale(x: int) -> int:
        return factor * x

    return scale


double = make_scaler(2)
triple = make_scaler(3)
