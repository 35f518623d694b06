# mailgrip with Exchange Online, by conditional routing: an outbound connector to mailgrip, a mail
# flow (transport) rule that routes through it, and an inbound connector that takes the mail
# back. Run in Exchange Online PowerShell (Connect-ExchangeOnline).
#
# NOT RUN AGAINST A REAL EXCHANGE ONLINE TENANT: parameter names were checked against Microsoft's
# cmdlet reference (New-OutboundConnector, New-InboundConnector, New-TransportRule,
# Set-InboundConnector, Set-ArcConfig), nothing more. Create the rule disabled (-Enabled $false),
# test with one mailbox, then enable. See README.md.

param(
    [string]$MailgripFqdn = "mailgrip.gemeentevoorbeeld.nl",
    # mailgrip's public address(es): the inbound connector accepts mail only from these.
    [string[]]$MailgripIPs = @("198.51.100.25"),
    # The name in mailgrip's TLS certificate, checked on the inbound connector too.
    [string]$MailgripCertName = "mailgrip.gemeentevoorbeeld.nl",
    # The domain of mailgrip's journaling address; see journal-rule.ps1.
    [string]$JournalDomain = "mailgrip.gemeentevoorbeeld.nl"
)

# 1. Outbound connector used only when a rule says so (IsTransportRuleScoped), port 25 with TLS
#    and the certificate's name checked.
New-OutboundConnector -Name "To mailgrip" -ConnectorType Partner `
    -IsTransportRuleScoped $true -UseMXRecord $false -SmartHosts $MailgripFqdn `
    -TlsSettings DomainValidation -TlsDomain $MailgripFqdn `
    -Comment "Conditional routing to mailgrip; see the mail flow rule 'Route through mailgrip'"

# 2. Journal reports are system messages: mail flow rules never apply to them, so conditional
#    routing cannot send them to mailgrip. A connector scoped to the journaling domain does.
New-OutboundConnector -Name "To mailgrip (journal)" -ConnectorType Partner `
    -RecipientDomains $JournalDomain -UseMXRecord $false -SmartHosts $MailgripFqdn `
    -TlsSettings DomainValidation -TlsDomain $MailgripFqdn `
    -Comment "Envelope journal reports for mailgrip's journal mode"

# 3. The rule. The exceptions stop the loop: mail coming back from mailgrip carries the
#    X-Mailgrip-Id and X-Mailgrip-Class headers, and must never match again. mailgrip removes any
#    X-Mailgrip-* header that arrives from outside, so a sender cannot use them to skip mailgrip.
#    No FromScope/SentToScope: all mail, inbound and outbound, is classified. Narrow it (e.g.
#    -FromScope InOrganization) if only outgoing mail is to be archived.
New-TransportRule -Name "Route through mailgrip" -Priority 0 `
    -RouteMessageOutboundConnector "To mailgrip" `
    -ExceptIfHeaderMatchesMessageHeader "X-Mailgrip-Id" -ExceptIfHeaderMatchesPatterns "." `
    -ExceptIfHeaderContainsMessageHeader "X-Mailgrip-Class" -ExceptIfHeaderContainsWords "functioneel", "prive", "niet-functioneel", "personeelsvertrouwelijk", "partijpolitiek", "unclassified" `
    -StopRuleProcessing $true -Mode Enforce -Enabled $false `
    -Comment "Loop stop: mail that already carries X-Mailgrip-Id / X-Mailgrip-Class is not routed again"

# 4. The way back: an inbound connector that accepts mail from mailgrip only, over TLS with
#    mailgrip's certificate name. OnPremises marks it as the organisation's own mail.
New-InboundConnector -Name "From mailgrip" -ConnectorType OnPremises `
    -SenderDomains "*" -SenderIPAddresses $MailgripIPs -RestrictDomainsToIPAddresses $true `
    -RequireTls $true -TlsSenderCertificateName $MailgripCertName `
    -Comment "Mail relayed back by mailgrip after classification"

# 5. Enhanced Filtering for Connectors: let Exchange Online's spam, spoof and SPF checks look past
#    mailgrip to the real sending IP (for mail from outside that went through mailgrip).
Set-InboundConnector -Identity "From mailgrip" -EFSkipLastIP $true

# 6. ARC: mailgrip adds headers after the sender's DKIM signature. mailgrip does not seal (ARC)
#    itself today; if a sealing hop is put after it, trust that sealer:
# Set-ArcConfig -Identity Default -ArcTrustedSealers "mailgrip.gemeentevoorbeeld.nl"
