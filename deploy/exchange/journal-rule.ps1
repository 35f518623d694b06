# Journal rule: Exchange sends an envelope journal report for every matching message to
# mailgrip's journaling address; mailgrip (journal.enabled = true) unwraps it, classifies the
# original and archives it with the report's envelope (BCC included). Works in the Exchange
# Management Shell (on-premises) and in Exchange Online PowerShell.
#
# NOT RUN AGAINST A REAL EXCHANGE: parameter names were checked against Microsoft's cmdlet
# reference (Set-TransportConfig, New-MailContact, New-JournalRule), nothing more.

param(
    # mailgrip's journaling address: list it in mailgrip's journal.recipients.
    [string]$JournalAddress = "journal@mailgrip.minbzk.nl",
    # Where Exchange sends journal reports that cannot be delivered (required in Exchange
    # Online before any journal rule; must not itself be journaled).
    [string]$NdrMailbox = "journal-ndr@minbzk.nl",
    # Global (all mail), Internal or External.
    [string]$Scope = "Global"
)

# Undeliverable journal reports go here (NDRs with the report attached). mailgrip answers a
# malformed report with 451, so a report only lands here after Exchange's retry period.
Set-TransportConfig -JournalingReportNdrTo $NdrMailbox

# On-premises, the journaling address must be a recipient Exchange can resolve: a mail contact
# pointing at mailgrip's address. In Exchange Online the external address is used directly.
# New-MailContact -Name "mailgrip journal" -ExternalEmailAddress $JournalAddress

New-JournalRule -Name "Journal to mailgrip" -JournalEmailAddress $JournalAddress `
    -Scope $Scope -Enabled $true
