"""grafanalib entry point of the Overview dashboard (`generate-dashboard` reads `dashboard`).

The panels are built in exporter/mixin/dashboards/overview.py from the default MixinConfig;
`tailwatch generate dashboards --out .` writes tailwatch-overview.json from the same builder.
"""

from exporter.mixin import MixinConfig
from exporter.mixin.dashboards import overview

dashboard = overview.build(MixinConfig())
