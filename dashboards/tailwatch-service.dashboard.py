"""grafanalib entry point of the Service dashboard (`generate-dashboard` reads `dashboard`).

The panels are built in exporter/mixin/dashboards/service.py from the default MixinConfig;
`tailwatch generate dashboards --out .` writes tailwatch-service.json from the same builder.
"""

from exporter.mixin import MixinConfig
from exporter.mixin.dashboards import service

dashboard = service.build(MixinConfig())
