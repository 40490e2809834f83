"""grafanalib entry point of the Node dashboard (`generate-dashboard` reads `dashboard`).

The panels are built in exporter/mixin/dashboards/node.py from the default MixinConfig;
`tailwatch generate dashboards --out .` writes tailwatch-node.json from the same builder.
"""

from exporter.mixin import MixinConfig
from exporter.mixin.dashboards import node

dashboard = node.build(MixinConfig())
