"""Python helpers shared by the test suites (tests-python), the drills (deploy/drills), the
randomized fault run (deploy/nemesis) and the benchmarks (bench): one copy of each.

`scripts/setup` puts this directory on the project venv's path (a `.pth` file), so every script
run with `.venv/bin/python` imports `leasehold_kit` without touching `sys.path`.
"""
