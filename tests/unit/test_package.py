"""The product package stands on its own."""

import subprocess
import sys


def test_product_never_imports_the_test_bed_and_does_not_shadow_operator():
    code = ("import sys, operator, modelship.cli; "
            "assert operator.__file__ is None or 'operator.py' in operator.__file__, operator.__file__; "
            "assert hasattr(operator, 'itemgetter'); "
            "assert not [m for m in sys.modules if m.startswith('modelship_testbed')], 'imports the test bed'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_testbed_plugin_loads_only_when_asked_for():
    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from modelship.cli import main\n"
            "r = CliRunner().invoke(main, ['version'])\n"
            "assert r.exit_code == 0, r.output\n"
            "assert 'modelship_testbed' not in sys.modules\n"
            "r = CliRunner().invoke(main, ['--help'])\n"
            "assert r.exit_code == 0 and 'testbed' in r.output, r.output\n")
    subprocess.run([sys.executable, "-c", code], check=True)
