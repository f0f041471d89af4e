//! `gatehouse issuer …`: issuer keys, credentials, revocation lists and feeds (the work is in
//! [`tools`]; here the arguments become calls and the results lines of output).

use std::process::ExitCode;

use anyhow::{Context, Result};
use gatehouse_protocol::RevocationKind;

use crate::cli::args::{
    CompactArgs, IssueArgs, IssuerCommand, KeygenArgs, RevocationKeygenArgs, RevokeArgs,
};
use crate::cli::output::out;
use crate::cli::runtime::now;
use crate::cli::tools;

/// Runs one `gatehouse issuer` command.
pub fn run(command: IssuerCommand) -> Result<ExitCode> {
    match command {
        IssuerCommand::Keygen(a) => keygen(a),
        IssuerCommand::Issue(a) => issue(a),
        IssuerCommand::Revoke(a) => revoke(a),
        IssuerCommand::Compact(a) => compact(a),
        IssuerCommand::RevocationKeygen(a) => revocation_keygen(a),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// `issuer keygen`: a new issuer key and the trust list naming it.
fn keygen(a: KeygenArgs) -> Result<()> {
    let key = tools::issuer_keygen(&a.out, &a.name, now(), a.force)?;
    out!(
        "issuer key: {}\ntrust list: {}",
        key.display(),
        a.out.join("trust.toml").display()
    );
    Ok(())
}

/// `issuer issue`: a credential for a new holder, written to a wallet directory.
fn issue(a: IssueArgs) -> Result<()> {
    let req = tools::IssueRequest {
        credential_type: a.credential_type,
        category: a.category,
        unit: a.unit,
        days: a.days,
        birth: a.birth,
        sponsor: a.sponsor,
        entitlements: a.entitlements,
    };
    let c = tools::issuer_issue(&a.key, &a.out, &req, now(), a.force)?;
    out!(
        "credential {} for subject {} written to {}",
        hex::encode(c.id),
        hex::encode(c.subject),
        a.out.display()
    );
    Ok(())
}

/// Credential, subject and sponsor ids, each tagged with its kind.
fn tagged(c: Vec<String>, s: Vec<String>, p: Vec<String>) -> Vec<(RevocationKind, String)> {
    c.into_iter()
        .map(|h| (RevocationKind::Credential, h))
        .chain(s.into_iter().map(|h| (RevocationKind::Subject, h)))
        .chain(p.into_iter().map(|h| (RevocationKind::Sponsor, h)))
        .collect()
}

/// `issuer revoke`: the next epoch published to `--feed`, or one list written to `--out`.
fn revoke(a: RevokeArgs) -> Result<()> {
    let ids = tagged(a.credentials, a.subjects, a.sponsors);
    let back = tagged(
        a.reinstate_credentials,
        a.reinstate_subjects,
        a.reinstate_sponsors,
    );
    let key = a.key.as_deref().map(tools::read_key).transpose()?;
    if let Some(feed) = a.feed {
        let key = key.context("--feed needs --key (the revocation key)")?;
        let target = tools::FeedTarget::parse(&feed, a.feed_key.as_deref())?;
        let list = tools::feed_publish(&target, &key, &ids, &back)?;
        out!(
            "revocation epoch {} published to {feed} ({} revoked, {} reinstated)",
            list.epoch,
            list.revoke.len(),
            list.reinstate.len()
        );
        return Ok(());
    }
    let epoch = a.epoch.context("without --feed, --epoch is required")?;
    let list = tools::issuer_revoke(&a.out, epoch, a.base, &ids, &back, key.as_ref(), a.force)?;
    out!(
        "revocation epoch {} ({} entries) written to {}",
        list.epoch,
        list.revoke.len(),
        a.out.display()
    );
    Ok(())
}

/// `issuer compact`: a feed's snapshot and deltas folded into a new snapshot.
fn compact(a: CompactArgs) -> Result<()> {
    let key = tools::read_key(&a.key)?;
    let target = tools::FeedTarget::parse(&a.feed, a.feed_key.as_deref())?;
    let list = tools::feed_compact(&target, &key)?;
    out!(
        "revocation snapshot {} ({} entries) published to {}",
        list.epoch,
        list.revoke.len(),
        a.feed
    );
    Ok(())
}

/// `issuer revocation-keygen`: a new revocation key, optionally added to a trust list.
fn revocation_keygen(a: RevocationKeygenArgs) -> Result<()> {
    let key = tools::revocation_keygen(&a.out, &a.name, a.trust.as_deref(), a.force)?;
    out!("revocation key: {}", key.display());
    if let Some(t) = a.trust {
        out!(
            "added to {} as [[revocation_key]] {:?}",
            t.display(),
            a.name
        );
    }
    Ok(())
}
