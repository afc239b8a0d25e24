"""python -m loadtests: the headless load-test runner (loadtests/runner.py)."""

from loadtests.runner import main

main()
