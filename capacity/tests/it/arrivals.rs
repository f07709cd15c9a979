//! Arrival patterns: the command line's forms, CSV text, and the times they generate.

use capacity::{Arrivals, Rng};

#[test]
fn arrival_patterns_parse() {
    let parse = |spec: &str| Arrivals::parse(spec).unwrap();
    assert_eq!(
        parse("constant:10/min"),
        Arrivals::Constant {
            per_minute: 10.0,
            minutes: 60.0
        }
    );
    assert_eq!(
        parse("constant:10/min:30m"),
        Arrivals::Constant {
            per_minute: 10.0,
            minutes: 30.0
        }
    );
    assert_eq!(
        parse("poisson:2.5/min:2h"),
        Arrivals::Poisson {
            per_minute: 2.5,
            minutes: 120.0
        }
    );
    assert_eq!(
        parse("poisson:4/min"),
        Arrivals::Poisson {
            per_minute: 4.0,
            minutes: 60.0
        }
    );
    assert_eq!(
        parse("ramp:0-20/min:30m"),
        Arrivals::Ramp {
            from: 0.0,
            to: 20.0,
            minutes: 30.0
        }
    );
    assert_eq!(parse("burst:100"), Arrivals::Burst { count: 100 });
    for bad in [
        "constant:abc",
        "burst:",
        "nope:1",
        "ramp:5/min",
        "constant:10/min:soon",
        "poisson",
    ] {
        let error = Arrivals::parse(bad).unwrap_err().to_string();
        assert!(
            error.contains(bad) && error.contains("accepted forms"),
            "{bad}: {error}"
        );
    }

    let parsed = Arrivals::from_csv("\u{feff}arrival_s\n0\n\n12.5\n3\n", "times.csv");
    let arrivals = parsed.unwrap();
    assert_eq!(arrivals, Arrivals::Times(vec![0.0, 12.5, 3.0]));
    assert_eq!(arrivals.times(&mut Rng::new(0)), vec![0.0, 3.0, 12.5]);
}

#[test]
fn arrival_patterns_generate_the_expected_counts() {
    let mut rng = Rng::new(3);
    let constant = Arrivals::Constant {
        per_minute: 10.0,
        minutes: 60.0,
    }
    .times(&mut rng);
    assert_eq!(constant.len(), 600);
    assert!((constant[1] - 6.0).abs() < 1e-9 && (constant[599] - 3594.0).abs() < 1e-9);
    // 0 → 20 uploads/min over 30 min averages 10/min: 300 uploads, denser towards the end.
    let ramp = Arrivals::Ramp {
        from: 0.0,
        to: 20.0,
        minutes: 30.0,
    }
    .times(&mut rng);
    assert_eq!(ramp.len(), 300);
    assert!(ramp.windows(2).all(|pair| pair[1] > pair[0]) && ramp[299] < 1800.0);
    assert!(ramp.iter().filter(|&&t| t < 900.0).count() < 100);
    let falling = Arrivals::Ramp {
        from: 20.0,
        to: 0.0,
        minutes: 30.0,
    }
    .times(&mut rng);
    assert_eq!(falling.len(), 300);
    assert!(falling[299] <= 1800.0);
    assert_eq!(Arrivals::Burst { count: 5 }.times(&mut rng), vec![0.0; 5]);
    assert_eq!(
        Arrivals::Burst { count: 100 }.describe(),
        "burst of 100 uploads at t = 0"
    );
}

#[test]
fn csv_text_errors_name_the_source_and_line() {
    let error = Arrivals::from_csv("0\n-4\n", "times.csv")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("times.csv:2:"), "{error}");
    let error = Arrivals::from_csv("seconds\n1\nsoon\n", "times.csv")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("times.csv:3:"), "{error}");
    let error = Arrivals::from_csv("seconds\n\n", "times.csv")
        .unwrap_err()
        .to_string();
    assert!(error.contains("holds no arrival times"), "{error}");
}

#[test]
fn lengths_take_a_unit_and_fractions() {
    use capacity::arrivals::parse_duration;
    for (text, seconds) in [
        ("90s", 90.0),
        ("4.5s", 4.5),
        ("30m", 1800.0),
        ("30min", 1800.0),
        ("1.5h", 5400.0),
    ] {
        assert_eq!(parse_duration(text), Some(seconds), "{text}");
    }
    for text in ["30", "0s", "-2m", "fast", "infh", "2 days"] {
        assert_eq!(parse_duration(text), None, "{text}");
    }
}
