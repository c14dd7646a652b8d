"""The pack's own socket types, prefixed so they never connect to another IP-Adapter pack's sockets."""

from comfy_api.latest import io

IPAdapterType = io.Custom("DECOUPLED_IPADAPTER")
EmbedsType = io.Custom("DECOUPLED_IPADAPTER_EMBEDS")
InsightFaceType = io.Custom("DECOUPLED_IPADAPTER_INSIGHTFACE")
WeightsStrategyType = io.Custom("DECOUPLED_IPADAPTER_WEIGHTS_STRATEGY")
ParamsType = io.Custom("DECOUPLED_IPADAPTER_PARAMS")  # a tuple of ipadapter_core.regions.Region
