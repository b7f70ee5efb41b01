//! Matcher correctness: agreement with a brute-force reference, the threshold + margin rule on
//! synthetic look-alikes, 1:1 verify, adaptive templates and atomic rebuild from the store.

use facegate::matcher::{Decision, DenyReason, MatchParams, Matcher, SharedMatcher};
use facegate::store::{
    EMBEDDING_DIM, Kek, KekSource, NewPerson, NewTemplate, SecretKey, Store, Template,
    TemplateKind, TemplateMeta,
};
use rand::Rng;

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

fn random_unit(rng: &mut impl Rng) -> Vec<f32> {
    unit(
        (0..EMBEDDING_DIM)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect(),
    )
}

/// `base` moved by noise of relative size `eps`, renormalised.
fn near(base: &[f32], eps: f32, rng: &mut impl Rng) -> Vec<f32> {
    let noise = random_unit(rng);
    unit(base.iter().zip(&noise).map(|(b, n)| b + eps * n).collect())
}

fn cos(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    d / (na * nb)
}

fn tpl(person: &str, v: Vec<f32>) -> Template {
    Template {
        person_id: person.into(),
        meta: TemplateMeta {
            seq: 0,
            kind: TemplateKind::Anchor,
            model_id: "m".into(),
            model_version: "1".into(),
            quality: Default::default(),
            created: 0,
        },
        vector: v.into(),
    }
}

#[test]
fn identify_agrees_with_brute_force() {
    let mut rng = rand::rng();
    let mut gallery = Vec::new();
    for p in 0..60 {
        let base = random_unit(&mut rng);
        for _ in 0..1 + p % 3 {
            gallery.push(tpl(&format!("p{p:02}"), near(&base, 0.3, &mut rng)));
        }
    }
    let m = Matcher::from_templates(&gallery, None, 0).unwrap();
    assert_eq!((m.len(), m.people()), (gallery.len(), 60));
    let params = MatchParams {
        threshold: 0.6,
        margin: 0.05,
    };
    let mut granted = 0;
    for q in 0..300 {
        let query = if q % 3 == 0 {
            random_unit(&mut rng)
        } else {
            near(&gallery[q % gallery.len()].vector, 0.4, &mut rng)
        };
        // Reference: per-person max in f64, then top-2.
        let mut per: std::collections::BTreeMap<&str, f64> = Default::default();
        for t in &gallery {
            let s = cos(&t.vector, &query);
            let e = per.entry(&t.person_id).or_insert(f64::NEG_INFINITY);
            *e = e.max(s);
        }
        let mut ranked: Vec<_> = per.into_iter().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (best_p, best) = ranked[0];
        let second = ranked[1].1;
        let r = m.identify(&query, &params);
        assert!(
            (f64::from(r.score) - best).abs() < 1e-4,
            "score {} vs {best}",
            r.score
        );
        assert!((f64::from(r.margin.unwrap()) - (best - second)).abs() < 1e-4);
        let expect = best >= 0.6 && best - second >= 0.05;
        // Skip decisions within float noise of a boundary.
        if (best - 0.6).abs() > 1e-4 && (best - second - 0.05).abs() > 1e-4 {
            assert_eq!(r.decision == Decision::Granted, expect, "query {q}");
            if expect {
                assert_eq!(r.person.as_deref(), Some(best_p));
                granted += 1;
            } else {
                assert!(r.person.is_none());
            }
        }
        assert_eq!(r.candidate.as_deref(), Some(best_p));
    }
    assert!(granted > 50, "test should exercise grants too ({granted})");
}

#[test]
fn margin_rule_rejects_near_duplicate_identities() {
    let mut rng = rand::rng();
    let alice = random_unit(&mut rng);
    let twin = near(&alice, 0.12, &mut rng); // look-alike: cosine ~0.99 to alice
    let carol = random_unit(&mut rng);
    assert!(cos(&alice, &twin) > 0.98);
    let gallery = vec![
        tpl("alice", alice.clone()),
        tpl("twin", twin.clone()),
        tpl("carol", carol.clone()),
    ];
    let params = MatchParams {
        threshold: 0.7,
        margin: 0.08,
    };
    let m = Matcher::from_templates(&gallery, None, 0).unwrap();

    let probe = near(&alice, 0.05, &mut rng);
    let r = m.identify(&probe, &params);
    assert!(
        r.score >= params.threshold,
        "clears the threshold ({})",
        r.score
    );
    assert_eq!(
        r.decision,
        Decision::Denied,
        "look-alike must not be granted"
    );
    assert_eq!(r.reason, Some(DenyReason::AmbiguousMargin));
    assert!(r.margin.unwrap() < params.margin);
    assert!(r.person.is_none());

    // Same probe, twin not enrolled: granted to alice.
    let m2 = Matcher::from_templates(
        &[tpl("alice", alice.clone()), tpl("carol", carol.clone())],
        None,
        0,
    )
    .unwrap();
    let r2 = m2.identify(&probe, &params);
    assert_eq!(
        (r2.decision, r2.person.as_deref()),
        (Decision::Granted, Some("alice"))
    );

    // Distinct identity in the same gallery is unaffected.
    let r3 = m.identify(&near(&carol, 0.05, &mut rng), &params);
    assert_eq!(
        (r3.decision, r3.person.as_deref()),
        (Decision::Granted, Some("carol"))
    );

    // Several templates of the *same* person never count as a competitor.
    let m4 = Matcher::from_templates(
        &[
            tpl("alice", alice.clone()),
            tpl("alice", near(&alice, 0.05, &mut rng)),
            tpl("carol", carol),
        ],
        None,
        0,
    )
    .unwrap();
    assert_eq!(m4.identify(&probe, &params).decision, Decision::Granted);

    // Unknown face.
    let r5 = m.identify(&random_unit(&mut rng), &params);
    assert_eq!(r5.reason, Some(DenyReason::BelowThreshold));

    // Verify: claiming "twin" while presenting alice's face → alice outscores the claim.
    let v = m.verify("twin", &alice, &params);
    assert!(v.score >= params.threshold);
    assert_eq!(
        (v.decision, v.reason),
        (Decision::Denied, Some(DenyReason::AmbiguousMargin))
    );
    let v = m.verify("alice", &alice, &params);
    assert_eq!(
        (v.decision, v.person.as_deref()),
        (Decision::Granted, Some("alice"))
    );
}

fn store_in(dir: &std::path::Path) -> Store {
    let kek = Kek::from_secret(SecretKey::random().unwrap(), KekSource::Memory);
    Store::create(&dir.join("s.redb"), &kek, "test").unwrap()
}

#[test]
fn adaptive_templates_are_capped_and_never_replace_anchors() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in(dir.path());
    let mut rng = rand::rng();
    let base = random_unit(&mut rng);
    let anchors = [
        NewTemplate::anchor(base.clone(), "m", "1"),
        NewTemplate::anchor(near(&base, 0.1, &mut rng), "m", "1"),
    ];
    s.add_person(
        &NewPerson {
            id: "a".into(),
            label: "A".into(),
            external_id: None,
        },
        &anchors,
        "t",
    )
    .unwrap();
    let mut added = Vec::new();
    for _ in 0..6 {
        let t = NewTemplate::anchor(near(&base, 0.2, &mut rng), "m", "1"); // kind forced to adaptive
        let (seq, evicted) = s.add_adaptive_template("a", &t, 3, "daemon").unwrap();
        added.push(seq);
        if added.len() > 3 {
            assert_eq!(
                evicted,
                vec![added[added.len() - 4]],
                "oldest adaptive evicted"
            );
        } else {
            assert!(evicted.is_empty());
        }
    }
    let ts = s.templates_of("a").unwrap();
    let anchors: Vec<_> = ts
        .iter()
        .filter(|t| t.kind == TemplateKind::Anchor)
        .map(|t| t.seq)
        .collect();
    let adaptive: Vec<_> = ts
        .iter()
        .filter(|t| t.kind == TemplateKind::Adaptive)
        .map(|t| t.seq)
        .collect();
    assert_eq!(anchors, vec![1, 2]);
    assert_eq!(adaptive, added[3..].to_vec());
    assert!(
        s.add_adaptive_template("nobody", &NewTemplate::anchor(base, "m", "1"), 3, "d")
            .is_err()
    );
    s.verify_audit().unwrap();
}

#[test]
fn matcher_rebuilds_from_store_and_swaps_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let s = store_in(dir.path());
    let mut rng = rand::rng();
    let (a, b) = (random_unit(&mut rng), random_unit(&mut rng));
    s.add_person(
        &NewPerson {
            id: "a".into(),
            label: "A".into(),
            external_id: None,
        },
        &[NewTemplate::anchor(a.clone(), "m", "1")],
        "t",
    )
    .unwrap();
    s.add_person(
        &NewPerson {
            id: "old".into(),
            label: "O".into(),
            external_id: None,
        },
        &[NewTemplate::anchor(b.clone(), "m", "0")],
        "t",
    )
    .unwrap();
    let params = MatchParams {
        threshold: 0.8,
        margin: 0.05,
    };
    let shared = SharedMatcher::new(Matcher::from_store(&s, Some(("m", "1"))).unwrap());
    let before = shared.current();
    assert_eq!(
        before.len(),
        1,
        "template of another model version is not matched"
    );
    assert_eq!(before.identify(&b, &params).decision, Decision::Denied);

    s.add_person(
        &NewPerson {
            id: "b".into(),
            label: "B".into(),
            external_id: None,
        },
        &[NewTemplate::anchor(b.clone(), "m", "1")],
        "t",
    )
    .unwrap();
    assert!(
        s.generation().unwrap() > before.generation(),
        "store change must be visible"
    );
    shared.replace(Matcher::from_store(&s, Some(("m", "1"))).unwrap());
    assert_eq!(
        shared.current().identify(&b, &params).person.as_deref(),
        Some("b")
    );
    // A lookup that grabbed the old snapshot still works on it.
    assert_eq!(before.identify(&a, &params).person.as_deref(), Some("a"));

    assert_eq!(s.remove_person("b", "t").unwrap(), 1);
    shared.replace(Matcher::from_store(&s, Some(("m", "1"))).unwrap());
    assert_eq!(
        shared.current().identify(&b, &params).decision,
        Decision::Denied
    );
    assert!(shared.current().memory_bytes() >= EMBEDDING_DIM * 4);
}
