"""Built-in EVS plugins. Each module is a plugin, loaded the same way as a third-party one."""
