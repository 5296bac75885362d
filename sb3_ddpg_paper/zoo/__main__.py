"""``python -m sb3_ddpg_paper.zoo COMMAND [rl_zoo3 arguments]``."""

from sb3_ddpg_paper.zoo.launcher import main

if __name__ == "__main__":
    main()
