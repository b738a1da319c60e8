// codewatch on Azure Container Apps, keyless: a storage account (shared keys off) with the queue and its
// poison queue (or queueShards of each, past one queue's ~2,000 messages/s), Key Vault holding the third-party function key, one user-assigned managed identity per
// app with least-privilege roles, PostgreSQL Flexible Server on a private network (no public access),
// a migration job, the producer with ingress to getcode only, and the worker scaled by KEDA on visible
// queue messages.
//   az deployment group create -g <rg> -f deploy/azure/main.bicep -p @deploy/azure/main.parameters.json \
//     -p functionKey=<key> verifyApiKey=<key> postgresAdminPassword=<password> \
//        postgresMigratePassword=<password> postgresAppPassword=<password>
// Then, once, from a machine on the VNet: run deploy/postgres/roles.sql as the administrator with the
// same two passwords, and start the migration job: az containerapp job start -g <rg> -n <prefix>-migrate

@description('Azure region for every resource.')
param location string = resourceGroup().location

@description('Prefix of resource names (letters and digits, 3 to 11 characters).')
@minLength(3)
@maxLength(11)
param namePrefix string = 'codewatch'

@description('The codewatch image, e.g. myregistry.azurecr.io/codewatch:1.0.0.')
param image string

@description('URL of the third-party random-number API (the sample\'s Azure Function).')
param thirdPartyApiEndpoint string

@description('The function key of that API; stored in Key Vault, never in app settings.')
@secure()
param functionKey string

@description('Bearer key the sign-in service sends to the verification endpoints.')
@secure()
param verifyApiKey string

@description('PostgreSQL administrator login.')
param postgresAdminLogin string = 'codewatch'

@description('PostgreSQL administrator password.')
@secure()
param postgresAdminPassword string

@description('Password of codewatch_migrate, the role that owns the schema (deploy/postgres/roles.sql).')
@secure()
param postgresMigratePassword string

@description('Password of codewatch_app, the runtime role of both apps: rows only, no schema changes.')
@secure()
param postgresAppPassword string

@description('Address space of the VNet the apps and the database share.')
param vnetAddressPrefix string = '10.40.0.0/16'

@description('The apps\' subnet, inside the VNet (a /23 or larger for Container Apps).')
param appsSubnetPrefix string = '10.40.0.0/23'

@description('The database\'s subnet, inside the VNet.')
param postgresSubnetPrefix string = '10.40.2.0/24'

@description('Seconds a code stays valid.')
param codeTtlSeconds int = 600

@description('Queues codes are spread over (STORAGE_QUEUE_SHARDS): one serves about 500 codes/s.')
@minValue(1)
@maxValue(64)
param queueShards int = 1

@description('Serve the walkthrough\'s unauthenticated GET /api/v1/getcode on the public ingress (unbound codes, a demonstration that no sign-in check naming its user accepts). A sign-in service issues codes through the internal sign-in API either way.')
param publicGetcode bool = false

var queueName = 'code-requests'
// As codewatch names them: the queue itself, then code-requests-1, code-requests-2, …
var shardNames = [for i in range(0, queueShards): i == 0 ? queueName : '${queueName}-${i}']
var secretName = 'third-party-api-key'
var suffix = uniqueString(resourceGroup().id)

// Built-in role definition ids.
var roles = {
  queueMessageSender: 'c6a89b2d-59bc-44d0-9896-0f6e12d7b80a'
  queueMessageProcessor: '8a0f0c08-91a1-4084-bc3d-661d67233fed'
  queueDataReader: '19e7f393-937e-4f77-808e-94535e297925'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
}

// The apps' subnet (delegated to Container Apps) and the database's (delegated to PostgreSQL): the
// database has no public endpoint, so no firewall rule is needed, and none lets all of Azure in.
resource vnet 'Microsoft.Network/virtualNetworks@2023-09-01' = {
  name: '${namePrefix}-vnet'
  location: location
  properties: {
    addressSpace: { addressPrefixes: [ vnetAddressPrefix ] }
    subnets: [
      {
        name: 'apps'
        properties: {
          addressPrefix: appsSubnetPrefix
          delegations: [ { name: 'apps', properties: { serviceName: 'Microsoft.App/environments' } } ]
          serviceEndpoints: [ { service: 'Microsoft.KeyVault' } ]
        }
      }
      {
        name: 'postgres'
        properties: {
          addressPrefix: postgresSubnetPrefix
          delegations: [ { name: 'postgres', properties: { serviceName: 'Microsoft.DBforPostgreSQL/flexibleServers' } } ]
        }
      }
    ]
  }
}

resource postgresDns 'Microsoft.Network/privateDnsZones@2020-06-01' = {
  name: '${namePrefix}.private.postgres.database.azure.com'
  location: 'global'
}

resource postgresDnsLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2020-06-01' = {
  parent: postgresDns
  name: '${namePrefix}-vnet'
  location: 'global'
  properties: {
    registrationEnabled: false
    virtualNetwork: { id: vnet.id }
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35:KEDA's queue scaler reads the queue length from the Container Apps platform, outside the VNet; access is by Entra ID role only (shared keys off)
  // checkov:skip=CKV_AZURE_206:zone-redundant (ZRS); a queue of ten-minute codes gains nothing from a copy in another region
  // checkov:skip=CKV_AZURE_43:the name is namePrefix (3 to 11 lowercase letters or digits) and a 13-character uniqueString, within the rules
  name: toLower('${namePrefix}${suffix}')
  location: location
  sku: { name: 'Standard_ZRS' }
  kind: 'StorageV2'
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in shardNames: {
  parent: queueService
  name: name
}]

resource poisonQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in shardNames: {
  parent: queueService
  name: '${name}-poison'
}]

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_189:reached from the apps' subnet through its service endpoint; the network rules deny every other network
  name: '${namePrefix}-kv-${take(suffix, 8)}'
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    enablePurgeProtection: true
    softDeleteRetentionInDays: 90
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'AzureServices'
      virtualNetworkRules: [ { id: vnet.properties.subnets[0].id } ]
    }
  }
}

resource functionKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:the function key is rotated by the function's owner (serve re-reads it after a refusal); an expiry date would stop code issuing
  parent: vault
  name: secretName
  properties: { value: functionKey, contentType: 'text/plain' }
}

resource producerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-serve-id'
  location: location
}

resource workerIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${namePrefix}-worker-id'
  location: location
}

// The producer only sends, and reads the function key.
resource producerSends 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in shardNames: {
  scope: queues[i]
  name: guid(queues[i].id, producerIdentity.id, roles.queueMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueMessageSender)
    principalId: producerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource producerReadsKey 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: functionKeySecret
  name: guid(functionKeySecret.id, producerIdentity.id, roles.keyVaultSecretsUser)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: producerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The worker receives and deletes, re-sends expiry messages, sets poison aside; KEDA reads the length.
resource workerProcesses 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in shardNames: {
  scope: queues[i]
  name: guid(queues[i].id, workerIdentity.id, roles.queueMessageProcessor)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueMessageProcessor)
    principalId: workerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource workerSends 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in shardNames: {
  scope: queues[i]
  name: guid(queues[i].id, workerIdentity.id, roles.queueMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueMessageSender)
    principalId: workerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource workerReadsLength 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in shardNames: {
  scope: queues[i]
  name: guid(queues[i].id, workerIdentity.id, roles.queueDataReader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueDataReader)
    principalId: workerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource workerPoisons 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (name, i) in shardNames: {
  scope: poisonQueues[i]
  name: guid(poisonQueues[i].id, workerIdentity.id, roles.queueMessageSender)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.queueMessageSender)
    principalId: workerIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}]

resource postgres 'Microsoft.DBforPostgreSQL/flexibleServers@2022-12-01' = {
  name: '${namePrefix}-pg-${take(suffix, 8)}'
  location: location
  sku: { name: 'Standard_B1ms', tier: 'Burstable' }
  properties: {
    version: '16'
    administratorLogin: postgresAdminLogin
    administratorLoginPassword: postgresAdminPassword
    storage: { storageSizeGB: 32 }
    backup: { backupRetentionDays: 7, geoRedundantBackup: 'Disabled' }
    highAvailability: { mode: 'Disabled' }
    // Private access: the server lives in its delegated subnet and has no public endpoint.
    network: {
      delegatedSubnetResourceId: vnet.properties.subnets[1].id
      privateDnsZoneArmResourceId: postgresDns.id
    }
  }
  dependsOn: [ postgresDnsLink ]
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2022-12-01' = {
  parent: postgres
  name: 'codewatch'
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${namePrefix}-logs'
  location: location
  properties: { sku: { name: 'PerGB2018' }, retentionInDays: 30 }
}

resource environment 'Microsoft.App/managedEnvironments@2024-03-01' = {
  name: '${namePrefix}-env'
  location: location
  properties: {
    vnetConfiguration: { infrastructureSubnetId: vnet.properties.subnets[0].id }
    workloadProfiles: [ { name: 'Consumption', workloadProfileType: 'Consumption' } ]
    appLogsConfiguration: {
      destination: 'log-analytics'
      logAnalyticsConfiguration: {
        customerId: logs.properties.customerId
        sharedKey: logs.listKeys().primarySharedKey
      }
    }
  }
}

// The apps connect as the runtime role (rows only); the migration job as the schema's owner.
var databaseHost = '${postgres.properties.fullyQualifiedDomainName}:5432/codewatch?sslmode=require'
var databaseUrl = 'postgres://codewatch_app:${uriComponent(postgresAppPassword)}@${databaseHost}'
var migrateDatabaseUrl = 'postgres://codewatch_migrate:${uriComponent(postgresMigratePassword)}@${databaseHost}'
var queueUrl = '${storage.properties.primaryEndpoints.queue}${queueName}'

resource producer 'Microsoft.App/containerApps@2024-03-01' = {
  name: '${namePrefix}-serve'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${producerIdentity.id}': {} }
  }
  properties: {
    managedEnvironmentId: environment.id
    configuration: {
      // Public: the home page, the public OpenAPI document and, with publicGetcode, the sample's getcode.
      // The sign-in API is reachable only inside the environment (8081); probes and metrics are not
      // exposed at all (9090).
      ingress: {
        external: true
        targetPort: 8080
        transport: 'http'
        additionalPortMappings: [ { external: false, targetPort: 8081, exposedPort: 8081 } ]
      }
      secrets: [
        { name: 'database-url', value: databaseUrl }
        { name: 'verify-api-key', value: verifyApiKey }
      ]
    }
    template: {
      terminationGracePeriodSeconds: 30
      containers: [
        {
          name: 'serve'
          image: image
          args: [ 'serve' ]
          env: [
            { name: 'AZURE_CLIENT_ID', value: producerIdentity.properties.clientId }
            { name: 'STORAGE_QUEUE_URL', value: queueUrl }
            { name: 'STORAGE_QUEUE_SHARDS', value: string(queueShards) }
            { name: 'KEY_VAULT_URL', value: vault.properties.vaultUri }
            { name: 'THIRD_PARTY_API_SECRET_NAME', value: secretName }
            { name: 'THIRD_PARTY_API_ENDPOINT', value: thirdPartyApiEndpoint }
            { name: 'DATABASE_URL', secretRef: 'database-url' } // checkov:skip=CKV_SECRET_6:a reference to a Container Apps secret, not a secret
            { name: 'MIGRATE_ON_START', value: 'false' }
            { name: 'VERIFY_API_KEY', secretRef: 'verify-api-key' } // checkov:skip=CKV_SECRET_6:a reference to a Container Apps secret, not a secret
            { name: 'LISTEN_ADDR', value: '0.0.0.0:8080' }
            { name: 'PUBLIC_GETCODE', value: publicGetcode ? 'true' : 'false' }
            { name: 'VERIFY_LISTEN_ADDR', value: '0.0.0.0:8081' }
            { name: 'ADMIN_LISTEN_ADDR', value: '0.0.0.0:9090' }
            { name: 'SHUTDOWN_GRACE_SECONDS', value: '20' }
            { name: 'LOG_FORMAT', value: 'json' }
          ]
          probes: [
            { type: 'Liveness', httpGet: { path: '/healthz', port: 9090 }, periodSeconds: 10 }
            { type: 'Readiness', httpGet: { path: '/readyz', port: 9090 }, periodSeconds: 5 }
          ]
          resources: { cpu: json('0.25'), memory: '0.5Gi' }
        }
      ]
      scale: { minReplicas: 1, maxReplicas: 5 }
    }
  }
  dependsOn: [ producerSends, producerReadsKey ]
}

resource worker 'Microsoft.App/containerApps@2024-03-01' = {
  name: '${namePrefix}-worker'
  location: location
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${workerIdentity.id}': {} }
  }
  properties: {
    managedEnvironmentId: environment.id
    configuration: {
      secrets: [ { name: 'database-url', value: databaseUrl } ]
    }
    template: {
      terminationGracePeriodSeconds: 30
      containers: [
        {
          name: 'worker'
          image: image
          args: [ 'worker' ]
          env: [
            { name: 'AZURE_CLIENT_ID', value: workerIdentity.properties.clientId }
            { name: 'STORAGE_QUEUE_URL', value: queueUrl }
            { name: 'STORAGE_QUEUE_SHARDS', value: string(queueShards) }
            { name: 'DATABASE_URL', secretRef: 'database-url' } // checkov:skip=CKV_SECRET_6:a reference to a Container Apps secret, not a secret
            { name: 'MIGRATE_ON_START', value: 'false' }
            { name: 'CODE_TTL_SECONDS', value: string(codeTtlSeconds) }
            { name: 'ADMIN_LISTEN_ADDR', value: '0.0.0.0:9090' }
            { name: 'SHUTDOWN_GRACE_SECONDS', value: '20' }
            { name: 'LOG_FORMAT', value: 'json' }
          ]
          probes: [
            { type: 'Liveness', httpGet: { path: '/healthz', port: 9090 }, periodSeconds: 10 }
            { type: 'Readiness', httpGet: { path: '/readyz', port: 9090 }, periodSeconds: 10 }
          ]
          resources: { cpu: json('0.25'), memory: '0.5Gi' }
        }
      ]
      scale: {
        minReplicas: 1
        maxReplicas: 10
        // One rule per shard (KEDA scales on the largest): every worker polls every shard, and codes
        // are spread evenly, so a shard's share of the 32 visible messages per replica is 32 / shards.
        // Visible messages only: pending expiry messages are invisible until their code expires.
        rules: [for name in shardNames: {
          name: 'visible-${name}'
          custom: {
            type: 'azure-queue'
            identity: workerIdentity.id
            metadata: {
              accountName: storage.name
              queueName: name
              queueLength: string(max(1, 32 / queueShards))
              queueLengthStrategy: 'visibleonly'
            }
          }
        }]
      }
    }
  }
  dependsOn: [ workerProcesses, workerSends, workerReadsLength, workerPoisons ]
}

// `codewatch migrate` as the schema's owner, started by hand (or a pipeline) before each release.
resource migrateJob 'Microsoft.App/jobs@2024-03-01' = {
  name: '${namePrefix}-migrate'
  location: location
  properties: {
    environmentId: environment.id
    configuration: {
      triggerType: 'Manual'
      replicaTimeout: 600
      replicaRetryLimit: 1
      manualTriggerConfig: { parallelism: 1, replicaCompletionCount: 1 }
      secrets: [ { name: 'migrate-database-url', value: migrateDatabaseUrl } ]
    }
    template: {
      containers: [
        {
          name: 'migrate'
          image: image
          args: [ 'migrate' ]
          env: [
            { name: 'DATABASE_URL', secretRef: 'migrate-database-url' } // checkov:skip=CKV_SECRET_6:a reference to a Container Apps secret, not a secret
            { name: 'LOG_FORMAT', value: 'json' }
          ]
          resources: { cpu: json('0.25'), memory: '0.5Gi' }
        }
      ]
    }
  }
}

@description('The producer\'s public URL.')
output producerUrl string = 'https://${producer.properties.configuration.ingress.fqdn}'

@description('The first shard\'s queue URL both apps use (the others are named from it).')
output queueUrl string = queueUrl
