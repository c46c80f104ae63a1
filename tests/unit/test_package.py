"""The product package stands on its own."""

import subprocess
import sys


def test_product_never_imports_the_test_bed_and_does_not_shadow_operator():
    code = ("import sys, operator, modelship.cli; "
            "assert operator.__file__ is None or 'operator.py' in operator.__file__, operator.__file__; "
            "assert hasattr(operator, 'itemgetter'); "
            "assert not [m for m in sys.modules if m.startswith('modelship_testbed')], 'imports the test bed'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_lists_the_testbed_plugin_without_importing_it():
    from click.testing import CliRunner

    from modelship.cli import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "testbed" in result.output
