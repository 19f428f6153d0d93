"""tokencredit recipes inside verl 0.9.1 (`pip install 'tokencredit[verl]'`), loaded by a bare `import verl`.

verl imports this module through the `verl.plugins` entry point that tokencredit declares (pyproject.toml), in
every process that imports verl (the launcher, the Ray task runner, the workers). Importing it

* registers `tc_<name>` in verl's advantage-estimator registry for every tokencredit advantage
  (`tc.names("advantage")`): select one with `algorithm.adv_estimator=tc_<name>` and the recipe with
  `+algorithm.tokencredit.recipe=<preset>` (settings: `settings.py`);
* installs the wrappers of `patches.py`: the start-up check, the route of token ids and entropies to the
  estimators in the V1 and the legacy trainer (`credit.py`), and the worker loss `TokenCreditLoss` with its
  per-mini-batch coefficients (`loss.py`).

See docs/verl.md.
"""

from tokencredit.integrations.verl.credit import CREDIT_FIELDS, register_estimators
from tokencredit.integrations.verl.loss import TokenCreditLoss
from tokencredit.integrations.verl.patches import install
from tokencredit.integrations.verl.settings import INPUTS, Settings, check_config, read_settings

register_estimators()
install()

__all__ = ["CREDIT_FIELDS", "INPUTS", "Settings", "TokenCreditLoss", "check_config", "install",
           "read_settings", "register_estimators"]
