"""The desired state of every resource provisioning creates, in the order it creates them.

Each function returns an :class:`~app.backends.azure.infra.Desired`: the body a create or an
update sends, built with the writing SDK's models, and the properties compared with Azure's.
The SDK model modules are imported here (not ``azure.ai.ml``: Azure ML resources are written
as the wire bodies its SDK sends, which tests/azure checks against the SDK's own requests).
"""

from __future__ import annotations

import uuid
from typing import Any

from app.backends.azure import names
from app.backends.azure.context import AzureContext
from app.backends.azure.infra import API, EXTENSION_TYPE, NETWORK_CONTRIBUTOR, Desired, wire

# uuid5 namespace of modelgate's role assignment names (any fixed UUID; never change it)
_ROLE_NAMESPACE = uuid.UUID("5b0cbd2a-4bd6-4bd1-9a52-6d6f6e4d6f64")


def _id(ctx: AzureContext, provider_path: str) -> str:
    return ctx.resource_id(provider_path)


def workspace_id(ctx: AzureContext) -> str:
    return _id(ctx, f"Microsoft.MachineLearningServices/workspaces/{ctx.workspace}")


def aks_id(ctx: AzureContext) -> str:
    return _id(ctx, f"Microsoft.ContainerService/managedClusters/{ctx.azure.aks_cluster}")


def apim_id(ctx: AzureContext) -> str:
    return _id(ctx, f"Microsoft.ApiManagement/service/{ctx.azure.apim_name}")


def resource_group(ctx: AzureContext) -> Desired:
    from azure.mgmt.resource.resources.models import ResourceGroup

    return Desired(f"resource-group:{ctx.resource_group}", "Resource group", ctx.resource_group,
                   f"/subscriptions/{ctx.subscription_id}/resourceGroups/{ctx.resource_group}",
                   API["resource_group"], wire(ResourceGroup(location=ctx.location)),
                   (("location", "location"),))


# API Management's own traffic through its subnet (learn.microsoft.com, "Virtual network
# configuration reference: API Management"): clients on 80/443, its control plane on 3443,
# the load balancer's probe on 6390; out to Storage, SQL, Key Vault and Monitor.
APIM_RULES: tuple[tuple[str, str, str, str, tuple[str, ...], int], ...] = (
    # name, direction, source, destination, ports, priority
    ("AllowClientHttpInbound", "Inbound", "Internet", "VirtualNetwork", ("80", "443"), 100),
    ("AllowApiManagementInbound", "Inbound", "ApiManagement", "VirtualNetwork", ("3443",), 110),
    ("AllowLoadBalancerInbound", "Inbound", "AzureLoadBalancer", "VirtualNetwork", ("6390",),
     120),
    ("AllowStorageOutbound", "Outbound", "VirtualNetwork", "Storage", ("443",), 100),
    ("AllowSqlOutbound", "Outbound", "VirtualNetwork", "Sql", ("1433",), 110),
    ("AllowKeyVaultOutbound", "Outbound", "VirtualNetwork", "AzureKeyVault", ("443",), 120),
    ("AllowMonitorOutbound", "Outbound", "VirtualNetwork", "AzureMonitor", ("1886", "443"), 130),
)


def nsg(ctx: AzureContext) -> Desired:
    from azure.mgmt.network.models import (
        NetworkSecurityGroup,
        NetworkSecurityGroupPropertiesFormat,
        SecurityRule,
        SecurityRulePropertiesFormat,
    )

    name = names.apim_nsg_name(ctx)
    rules = []
    for rule, direction, source, destination, ports, priority in APIM_RULES:
        port_kwargs: dict[str, Any] = ({"destination_port_range": ports[0]} if len(ports) == 1
                                       else {"destination_port_ranges": list(ports)})
        rules.append(SecurityRule(name=rule, properties=SecurityRulePropertiesFormat(
            direction=direction, access="Allow", protocol="Tcp", priority=priority,
            source_port_range="*", source_address_prefix=source,
            destination_address_prefix=destination, **port_kwargs)))
    body = wire(NetworkSecurityGroup(
        location=ctx.location,
        properties=NetworkSecurityGroupPropertiesFormat(security_rules=rules)))
    watch = tuple((f"rule {rule[0]}", f"properties.securityRules[name={rule[0]}].properties")
                  for rule in APIM_RULES)
    return Desired(f"nsg:{name}", "Network security group", name,
                   _id(ctx, f"Microsoft.Network/networkSecurityGroups/{name}"), API["network"],
                   body, watch)


def vnet(ctx: AzureContext) -> Desired:
    from azure.mgmt.network.models import (
        AddressSpace,
        NetworkSecurityGroup,
        Subnet,
        SubnetPropertiesFormat,
        VirtualNetwork,
        VirtualNetworkPropertiesFormat,
    )

    az = ctx.azure
    nsg_id = nsg(ctx).resource_id
    # Subnets inline: a VNET PUT without them would remove them. The API Management subnet
    # carries the NSG and no delegation (API Management refuses delegated subnets).
    subnets = [Subnet(name=names.AKS_SUBNET,
                      properties=SubnetPropertiesFormat(address_prefix=az.aks_subnet_range)),
               Subnet(name=names.APIM_SUBNET,
                      properties=SubnetPropertiesFormat(
                          address_prefix=az.apim_subnet_range,
                          network_security_group=NetworkSecurityGroup(id=nsg_id)))]
    body = wire(VirtualNetwork(location=ctx.location, properties=VirtualNetworkPropertiesFormat(
        address_space=AddressSpace(address_prefixes=[az.vnet_address_range]), subnets=subnets)))
    watch = (("address_prefixes", "properties.addressSpace.addressPrefixes"),
             *subnet_watch(names.AKS_SUBNET), *subnet_watch(names.APIM_SUBNET))
    return Desired(f"vnet:{az.vnet_name}", "Virtual network", az.vnet_name,
                   _id(ctx, f"Microsoft.Network/virtualNetworks/{az.vnet_name}"), API["network"],
                   body, watch)


def subnet_watch(subnet: str) -> tuple[tuple[str, str], ...]:
    at = f"properties.subnets[name={subnet}].properties"
    watched = [(f"subnets.{subnet}.address_prefix", f"{at}.addressPrefix")]
    if subnet == names.APIM_SUBNET:
        watched.append((f"subnets.{subnet}.network_security_group",
                        f"{at}.networkSecurityGroup.id"))
    return tuple(watched)


AGENT_POOL = "system"


def aks(ctx: AzureContext) -> Desired:
    from azure.mgmt.containerservice.models import (
        ContainerServiceNetworkProfile,
        ManagedCluster,
        ManagedClusterAgentPoolProfile,
        ManagedClusterAPIServerAccessProfile,
        ManagedClusterIdentity,
        ManagedClusterProperties,
    )

    az = ctx.azure
    body = wire(ManagedCluster(
        location=ctx.location,
        identity=ManagedClusterIdentity(type="SystemAssigned"),
        properties=ManagedClusterProperties(
            dns_prefix=az.aks_cluster,
            agent_pool_profiles=[ManagedClusterAgentPoolProfile(
                name=AGENT_POOL, mode="System", count=az.aks_node_count,
                vm_size=az.aks_node_size, os_type="Linux", type="VirtualMachineScaleSets",
                vnet_subnet_id=names.subnet_id(ctx, names.AKS_SUBNET))],
            # Azure CNI overlay: nodes take subnet addresses, pods the overlay's pod_cidr; the
            # service range lies outside the VNET (the seed's overlapped it).
            network_profile=ContainerServiceNetworkProfile(
                network_plugin="azure", network_plugin_mode="overlay", pod_cidr=az.pod_cidr,
                service_cidr=az.service_cidr, dns_service_ip=az.dns_service_ip,
                load_balancer_sku="standard"),
            api_server_access_profile=ManagedClusterAPIServerAccessProfile(
                enable_private_cluster=True))))
    pool = f"properties.agentPoolProfiles[name={AGENT_POOL}]"
    net = "properties.networkProfile"
    watch = (("node_count", f"{pool}.count"), ("node_size", f"{pool}.vmSize"),
             ("node_subnet", f"{pool}.vnetSubnetID"),
             ("network_plugin", f"{net}.networkPlugin"),
             ("network_plugin_mode", f"{net}.networkPluginMode"),
             ("pod_cidr", f"{net}.podCidr"), ("service_cidr", f"{net}.serviceCidr"),
             ("dns_service_ip", f"{net}.dnsServiceIP"),
             ("private_api_server", "properties.apiServerAccessProfile.enablePrivateCluster"),
             ("identity", "identity.type"))
    return Desired(f"aks:{az.aks_cluster}", "AKS cluster", az.aks_cluster, aks_id(ctx),
                   API["aks"], body, watch)


def role_assignment_name(scope: str, role_definition_id: str, principal_id: str) -> str:
    """A deterministic assignment name (a GUID), so creating it again is idempotent."""
    seed = f"{scope}|{role_definition_id}|{principal_id}".lower()
    return str(uuid.uuid5(_ROLE_NAMESPACE, seed))


def role_assignment(ctx: AzureContext, principal_id: str | None) -> Desired:
    """Network Contributor for the cluster's identity on its subnet (it joins nodes and the
    internal load balancer to the subnet). Without the principal (no cluster yet) the name
    is not known."""
    from azure.mgmt.authorization.v2022_04_01.models import RoleAssignmentCreateParameters

    scope = names.subnet_id(ctx, names.AKS_SUBNET)
    role = (f"/subscriptions/{ctx.subscription_id}/providers/Microsoft.Authorization/"
            f"roleDefinitions/{NETWORK_CONTRIBUTOR}")
    label = f"Network Contributor on subnet {names.AKS_SUBNET}"
    if principal_id is None:
        return Desired(f"role-assignment:{names.AKS_SUBNET}", "Role assignment", label, "",
                       API["role"], {})
    name = role_assignment_name(scope, role, principal_id)
    body = wire(RoleAssignmentCreateParameters(role_definition_id=role,
                                               principal_id=principal_id,
                                               principal_type="ServicePrincipal"))
    return Desired(f"role-assignment:{names.AKS_SUBNET}", "Role assignment", label,
                   f"{scope}/providers/Microsoft.Authorization/roleAssignments/{name}",
                   API["role"], body,
                   (("role", "properties.roleDefinitionId"),
                    ("principal", "properties.principalId")))


def extension_settings(ctx: AzureContext) -> dict[str, str]:
    """The Azure ML extension's configuration for inference on an internal load balancer
    (learn.microsoft.com, "Deploy Azure Machine Learning extension on AKS")."""
    return {
        "enableTraining": "False",
        "enableInference": "True",
        "inferenceRouterServiceType": "loadBalancer",
        "internalLoadBalancerProvider": "azure",
        # the router serves plain HTTP inside the VNET; API Management terminates TLS
        "allowInsecureConnections": "True",
        # a highly available router needs 3 nodes
        "inferenceRouterHA": "True" if ctx.azure.aks_node_count >= 3 else "False",
        "installNvidiaDevicePlugin": "False",
        "installDcgmExporter": "False",
    }


def extension(ctx: AzureContext) -> Desired:
    from azure.mgmt.kubernetesconfiguration.v2023_05_01.models import (
        Extension,
        Scope,
        ScopeCluster,
    )

    body = wire(Extension(
        extension_type=EXTENSION_TYPE, auto_upgrade_minor_version=True,
        scope=Scope(cluster=ScopeCluster(release_namespace=names.EXTENSION_NAMESPACE)),
        configuration_settings=extension_settings(ctx)))
    return Desired(f"extension:{names.EXTENSION_NAME}", "Cluster extension",
                   f"{names.EXTENSION_NAME} ({EXTENSION_TYPE})",
                   f"{aks_id(ctx)}/providers/Microsoft.KubernetesConfiguration/extensions/"
                   f"{names.EXTENSION_NAME}", API["extension"], body,
                   (("extension_type", "properties.extensionType"),
                    ("release_namespace", "properties.scope.cluster.releaseNamespace"),
                    ("configuration_settings", "properties.configurationSettings")))


# ---- the Azure ML workspace and what it needs (ARM bodies as azure-rest-api-specs documents)


def log_analytics(ctx: AzureContext) -> Desired:
    name = names.log_analytics_name(ctx)
    body = {"location": ctx.location,
            "properties": {"sku": {"name": "PerGB2018"}, "retentionInDays": 30}}
    return Desired(f"log-analytics:{name}", "Log Analytics workspace", name,
                   _id(ctx, f"Microsoft.OperationalInsights/workspaces/{name}"),
                   API["log_analytics"], body,
                   (("sku", "properties.sku.name"), ("retention_days",
                                                     "properties.retentionInDays")))


def insights(ctx: AzureContext) -> Desired:
    name = names.insights_name(ctx)
    # Classic Application Insights is retired: a component sends to a Log Analytics workspace.
    body = {"location": ctx.location, "kind": "web",
            "properties": {"Application_Type": "web", "IngestionMode": "LogAnalytics",
                           "WorkspaceResourceId": log_analytics(ctx).resource_id}}
    return Desired(f"app-insights:{name}", "Application Insights", name,
                   _id(ctx, f"Microsoft.Insights/components/{name}"), API["insights"], body,
                   (("application_type", "properties.Application_Type"),
                    ("log_analytics_workspace", "properties.WorkspaceResourceId")))


def storage(ctx: AzureContext) -> Desired:
    name = names.storage_account_name(ctx)
    body = {"location": ctx.location, "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
            "properties": {"minimumTlsVersion": "TLS1_2", "allowBlobPublicAccess": False,
                           "supportsHttpsTrafficOnly": True,
                           # Azure ML's datastore and the dataset upload use the account key
                           "allowSharedKeyAccess": True}}
    return Desired(f"storage:{name}", "Storage account", name,
                   _id(ctx, f"Microsoft.Storage/storageAccounts/{name}"), API["storage"], body,
                   (("sku", "sku.name"), ("kind", "kind"),
                    ("minimum_tls_version", "properties.minimumTlsVersion"),
                    ("allow_blob_public_access", "properties.allowBlobPublicAccess"),
                    ("https_only", "properties.supportsHttpsTrafficOnly")))


def key_vault(ctx: AzureContext, tenant: str) -> Desired:
    name = names.key_vault_name(ctx)
    body = {"location": ctx.location,
            "properties": {"tenantId": tenant, "sku": {"family": "A", "name": "standard"},
                           "enableSoftDelete": True, "softDeleteRetentionInDays": 7}}
    # Azure ML adds the workspace's own access policy: an update must not send the list.
    return Desired(f"key-vault:{name}", "Key vault", name,
                   _id(ctx, f"Microsoft.KeyVault/vaults/{name}"), API["key_vault"], body,
                   (("sku", "properties.sku.name"), ("tenant", "properties.tenantId")),
                   create_only={"properties": {"accessPolicies": []}})


def workspace(ctx: AzureContext) -> Desired:
    body = {"location": ctx.location, "identity": {"type": "SystemAssigned"},
            "sku": {"name": "Basic", "tier": "Basic"}, "kind": "Default",
            "properties": {"friendlyName": ctx.workspace,
                           "storageAccount": storage(ctx).resource_id,
                           "keyVault": key_vault(ctx, "").resource_id,
                           "applicationInsights": insights(ctx).resource_id,
                           "hbiWorkspace": False, "publicNetworkAccess": "Enabled"}}
    return Desired(f"workspace:{ctx.workspace}", "Azure ML workspace", ctx.workspace,
                   workspace_id(ctx), API["workspace"], body,
                   (("storage_account", "properties.storageAccount"),
                    ("key_vault", "properties.keyVault"),
                    ("application_insights", "properties.applicationInsights"),
                    ("identity", "identity.type")))


def compute(ctx: AzureContext) -> Desired:
    az = ctx.azure
    # The body azure-ai-ml sends for AmlCompute(size, min_instances=0, max_instances=N).
    body = {"location": ctx.location,
            "properties": {"computeType": "AmlCompute",
                           "properties": {"vmSize": az.compute_vm_size,
                                          "scaleSettings": {"minNodeCount": 0,
                                                            "maxNodeCount": az.compute_max_nodes}
                                          }}}
    at = "properties.properties"
    return Desired(f"compute:{az.compute_name}", "Compute cluster", az.compute_name,
                   f"{workspace_id(ctx)}/computes/{az.compute_name}", API["compute"], body,
                   (("vm_size", f"{at}.vmSize"),
                    ("min_nodes", f"{at}.scaleSettings.minNodeCount"),
                    ("max_nodes", f"{at}.scaleSettings.maxNodeCount")))


def attached_compute(ctx: AzureContext) -> Desired:
    name = names.attached_compute_name(ctx)
    # The body azure-ai-ml sends for KubernetesCompute(resource_id, namespace).
    body = {"location": ctx.location,
            "properties": {"computeType": "Kubernetes", "resourceId": aks_id(ctx),
                           "properties": {"namespace": names.EXTENSION_NAMESPACE}}}
    return Desired(f"attached-compute:{name}", "Attached compute (Kubernetes)", name,
                   f"{workspace_id(ctx)}/computes/{name}", API["compute"], body,
                   (("cluster", "properties.resourceId"),
                    ("namespace", "properties.properties.namespace")))


def apim(ctx: AzureContext) -> Desired:
    from azure.mgmt.apimanagement.models import (
        ApiManagementServiceResource,
        ApiManagementServiceSkuProperties,
        VirtualNetworkConfiguration,
    )

    az = ctx.azure
    body = wire(ApiManagementServiceResource(
        location=ctx.location,
        sku=ApiManagementServiceSkuProperties(name=az.apim_sku, capacity=az.apim_capacity),
        publisher_email=az.apim_email, publisher_name=az.apim_publisher_name,
        # External: the gateway is public, inside the VNET, so it reaches the cluster's
        # internal load balancer.
        virtual_network_type="External",
        virtual_network_configuration=VirtualNetworkConfiguration(
            subnet_resource_id=names.subnet_id(ctx, names.APIM_SUBNET))))
    return Desired(f"apim:{az.apim_name}", "API Management service", az.apim_name,
                   apim_id(ctx), API["apim"], body,
                   (("sku", "sku.name"), ("capacity", "sku.capacity"),
                    ("publisher_email", "properties.publisherEmail"),
                    ("publisher_name", "properties.publisherName"),
                    ("virtual_network_type", "properties.virtualNetworkType"),
                    ("subnet", "properties.virtualNetworkConfiguration.subnetResourceId")))
