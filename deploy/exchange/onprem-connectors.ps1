# mailgrip beside Exchange Server (2016/2019/SE), on-premises: Send connector to mailgrip as smart
# host, Receive connector for the mail mailgrip relays back, and a Send connector that carries
# journal reports to mailgrip's journaling address. Run in the Exchange Management Shell.
#
# NOT RUN AGAINST A REAL EXCHANGE: parameter names were checked against Microsoft's cmdlet
# reference (New-SendConnector, New-ReceiveConnector), nothing more. Try it in a test organisation
# first, with -WhatIf. See README.md for the mail flow and the loop this must not create.

param(
    # mailgrip's host name; must match the name in its TLS certificate (smtp.hostname).
    [string]$MailgripFqdn = "mailgrip.minbzk.nl",
    # mailgrip's address(es), for the Receive connector's allow list.
    [string[]]$MailgripIPs = @("192.0.2.25"),
    # The Mailbox server(s) that send through mailgrip and receive from it.
    [string[]]$ExchangeServers = @("EXCH01"),
    # The domain of mailgrip's journaling address (journal@<this>); see journal-rule.ps1.
    [string]$JournalDomain = "mailgrip.minbzk.nl"
)

# 1. Outbound: everything for the internet goes to mailgrip (port 25, TLS required, certificate
#    name checked). mailgrip relays on to the internet-facing hop in relay.next_hop (an Edge
#    server or an outbound MTA), never back to these servers: see "Loops" in README.md.
New-SendConnector -Name "To mailgrip (outbound)" -Usage Custom `
    -AddressSpaces "SMTP:*;1" `
    -DNSRoutingEnabled $false -SmartHosts $MailgripFqdn -Port 25 `
    -SmartHostAuthMechanism None `
    -RequireTLS $true -TlsAuthLevel DomainValidation -TlsDomain $MailgripFqdn `
    -SourceTransportServers $ExchangeServers `
    -Comment "mailgrip classifies and tags, then relays to relay.next_hop"

# 2. Journal reports: the journaling domain is routed to mailgrip by its own, more specific
#    address space (it wins over "*"), so reports reach mailgrip even if (1) is not used.
New-SendConnector -Name "To mailgrip (journal)" -Usage Custom `
    -AddressSpaces "SMTP:$JournalDomain;1" `
    -DNSRoutingEnabled $false -SmartHosts $MailgripFqdn -Port 25 `
    -SmartHostAuthMechanism None `
    -RequireTLS $true -TlsAuthLevel DomainValidation -TlsDomain $MailgripFqdn `
    -SourceTransportServers $ExchangeServers `
    -Comment "Envelope journal reports for mailgrip's journal mode"

# 3. Inbound from mailgrip (internet MX -> mailgrip -> Exchange): a dedicated Receive connector
#    on port 25 that only mailgrip's addresses can reach. ExternalAuthoritative with
#    ExchangeServers makes Exchange treat mailgrip as part of the organisation (it keeps the
#    anti-spam verdicts and the X-Mailgrip-* headers); TLS is offered and mailgrip's relay side
#    uses it. MaxHopCount stays the backstop against any loop.
foreach ($server in $ExchangeServers) {
    New-ReceiveConnector -Name "From mailgrip" -Server $server -TransportRole FrontendTransport `
        -Usage Custom -Bindings "0.0.0.0:25" -RemoteIPRanges $MailgripIPs `
        -AuthMechanism "Tls, ExternalAuthoritative" -PermissionGroups ExchangeServers `
        -MaxHopCount 60 `
        -Comment "Mail relayed back by mailgrip after classification"
}
