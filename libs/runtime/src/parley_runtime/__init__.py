"""What every Parley service process shares (issue 20): the settings base class
(:mod:`parley_runtime.settings`), logging (:mod:`parley_runtime.logs`) and the process
runner with one graceful-shutdown rule (:mod:`parley_runtime.runner`)."""
