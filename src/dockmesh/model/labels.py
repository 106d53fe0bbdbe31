"""Labels dockmesh writes on what it creates."""

LABEL_PROJECT = "dockmesh.project"
LABEL_SERVICE = "dockmesh.spec.service"
LABEL_REPLICA = "dockmesh.spec.replica"
LABEL_HASH = "dockmesh.spec.hash"
LABEL_CONFIG = "dockmesh.spec.config"
