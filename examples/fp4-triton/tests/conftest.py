# The core's shared pytest setup: the ``gpu`` marker (skipped without CUDA) and a private
# tuning cache per test.
pytest_plugins = ["fp4core.pytest_plugin"]
