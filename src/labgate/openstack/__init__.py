"""OpenStack: project routers as gateways and forwards that follow their VM (docs/openstack.md). Imported only when
an [openstack] section exists; openstacksdk is the optional extra `labgate[openstack]`."""
