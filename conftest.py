pytest_plugins = ["parley_devstack.testing"]
