# lit configuration for gimlet's golden tests: `// RUN: gimletc opt %s ... | filecheck %s`.
import os

import lit.formats

config.name = "gimlet"
config.test_format = lit.formats.ShTest()  # lit's internal shell (ShTest(True) raises on lit 23)
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
config.excludes = ["lit.cfg.py", "Output", "inputs"]
# gimletc and filecheck come from the same virtualenv as lit itself.
bin_dir = os.path.dirname(__import__("sys").executable)
config.environment["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
config.substitutions.append(("%inputs", os.path.join(config.test_source_root, "inputs")))
