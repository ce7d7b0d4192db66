from wdctl.cli import entry

entry()
