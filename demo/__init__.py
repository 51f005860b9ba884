"""The one-command CoRe² demo on the toy text-to-image world: Collect → Reflect → Refine on a CPU in minutes.

    bash scripts/demo.sh                  # sets up the environment, then runs python -m demo.run
    python -m demo.run --out demo_out     # the same inside the environment
"""
