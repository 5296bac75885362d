"""
RL Zoo integration (optional extra: ``pip install sb3-ddpg-paper[zoo]``): ``python -m sb3_ddpg_paper.zoo train
--algo paper_ddpg --env Pendulum-v1``. See docs/zoo.md.

Importing this package does not import rl_zoo3 (which patches gymnasium on import); :func:`register` and
:func:`main` do.
"""

from typing import Any

__all__ = ["main", "register"]


def register(*args: Any, **kwargs: Any) -> None:
    """Register ``paper_ddpg`` with rl_zoo3 (see :func:`sb3_ddpg_paper.zoo.launcher.register`)."""
    from sb3_ddpg_paper.zoo.launcher import register as _register

    _register(*args, **kwargs)


def main(argv: Any = None) -> None:
    """The launcher (see :func:`sb3_ddpg_paper.zoo.launcher.main`)."""
    from sb3_ddpg_paper.zoo.launcher import main as _main

    _main(argv)
