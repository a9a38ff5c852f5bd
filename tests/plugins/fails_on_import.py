raise RuntimeError("this plugin needs a setting that is missing")
