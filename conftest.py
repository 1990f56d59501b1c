"""The testing kit's pytest fixtures (ojs_fake, ojs_inline, ojs_real) for this repository's own
tests and the example handlers' tests. An installed ojs-runtime registers the same plugin
through its pytest11 entry point, under this module's name, so it is loaded once either way."""

pytest_plugins = ["runtime.testing.pytest_plugin"]
