//! A realistic province built from a seed: cities, counties, alliances ("1+N": one strong urban
//! school leading weaker urban, town and rural ones), zones of 5-10 complementary schools inside a
//! county, classrooms with their terminals and equipment, teachers and a starting resource pool.
//!
//! Master data follows the pattern `domain.md` describes: urban schools have more senior-title
//! and key teachers and more equipment per pupil; rural schools are small, have more space per
//! pupil but less of everything else.

use edubrain_schemas::event::Equipment;
use edubrain_schemas::{Level, Locale, School};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// How big a province to build.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvinceSpec {
    pub seed: u64,
    pub cities: u32,
    pub alliances_per_city: u32,
    pub schools_per_alliance: u32,
    pub classrooms_per_school: u32,
}

impl Default for ProvinceSpec {
    /// The demo province: 2 cities, 4 alliances, 40 schools, 400 classrooms.
    fn default() -> Self {
        Self { seed: 2026, cities: 2, alliances_per_city: 2, schools_per_alliance: 10, classrooms_per_school: 10 }
    }
}

/// A classroom (or lab / recording room) and the terminal agent on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Classroom {
    pub id: String,
    pub terminal: String,
    pub school: String,
    pub city: String,
    /// The equipment device in the room and what it is.
    pub device_id: String,
    pub equipment: Equipment,
    /// A lab that other schools book online.
    pub shared_lab: bool,
    /// A recording room that broadcasts dual-teacher lessons.
    pub recording_room: bool,
    pub grade: u8,
}

/// A school with everything the simulator needs beyond its registry rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSchool {
    pub id: String,
    pub city: String,
    pub county: String,
    pub alliance: String,
    pub zone: String,
    pub locale: Locale,
    pub strong: bool,
    pub levels: Vec<Level>,
    pub classrooms: Vec<Classroom>,
    pub teachers: Vec<String>,
    /// 0..1: how much the school uses what it has (drives usage, scores, uploads).
    pub vigour: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub id: String,
    pub owner_school: String,
    pub subject: String,
    pub kind: edubrain_schemas::event::ResourceKind,
    /// Latent quality 0..1; ratings are drawn around it.
    pub quality: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Province {
    pub spec: ProvinceSpec,
    pub schools: Vec<SimSchool>,
    pub registry: Vec<School>,
    pub resources: Vec<Resource>,
}

pub const SUBJECTS: [&str; 8] = ["chinese", "math", "english", "science", "physics", "art", "music", "pe"];

impl Province {
    pub fn school(&self, id: &str) -> Option<&SimSchool> {
        self.schools.iter().find(|s| s.id == id)
    }

    pub fn classrooms(&self) -> impl Iterator<Item = &Classroom> {
        self.schools.iter().flat_map(|s| s.classrooms.iter())
    }

    /// The per-alliance pseudonymisation key. In a real deployment it is provisioned to the
    /// alliance's terminals; the simulator derives it from the seed so runs are reproducible.
    pub fn alliance_key(&self, alliance: &str) -> Vec<u8> {
        format!("edubrain-sim-{}-{alliance}", self.spec.seed).into_bytes()
    }
}

fn jitter(rng: &mut StdRng, x: f64, rel: f64) -> f64 {
    x * (1.0 + rng.random_range(-rel..=rel))
}

/// Builds the province of `spec`, deterministically.
pub fn build(spec: &ProvinceSpec) -> Province {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut schools = Vec::new();
    let mut registry = Vec::new();
    for c in 1..=spec.cities {
        let city = format!("c{c:02}");
        let mut n = 0u32;
        for a in 1..=spec.alliances_per_city {
            let alliance = format!("{city}-a{a}");
            for k in 0..spec.schools_per_alliance {
                n += 1;
                let id = format!("{city}-s{n:03}");
                let strong = k == 0;
                // 1 strong urban lead school, then a mix leaning rural, like real alliances.
                let locale = match k {
                    0 | 1 => Locale::Urban,
                    _ if k % 3 == 0 => Locale::Town,
                    _ if k % 3 == 1 => Locale::Rural,
                    _ => {
                        if k % 2 == 0 {
                            Locale::Town
                        } else {
                            Locale::Rural
                        }
                    }
                };
                // Alliances straddle both counties of their city.
                let county = format!("{city}-k{}", 1 + (k % 2));
                let levels = if strong && a == 1 {
                    vec![Level::Primary, Level::Junior] // a through-school: one row per level
                } else if k % 3 == 2 {
                    vec![Level::Junior]
                } else {
                    vec![Level::Primary]
                };
                let vigour = match (strong, locale) {
                    (true, _) => 0.9,
                    (_, Locale::Urban) => 0.75,
                    (_, Locale::Town) => 0.55,
                    (_, Locale::Rural) => 0.4,
                } * rng.random_range(0.9..1.1);
                let mut classrooms = Vec::new();
                for r in 1..=spec.classrooms_per_school {
                    let cid = format!("{id}-r{r:02}");
                    let (equipment, shared_lab, recording_room) = if r == 1 {
                        (Equipment::LabStation, true, false)
                    } else if r == 2 && strong {
                        (Equipment::RecordingCamera, false, true)
                    } else if r % 4 == 0 && locale != Locale::Rural {
                        (Equipment::InteractiveWhiteboard, false, false)
                    } else {
                        (Equipment::Projector, false, false)
                    };
                    let grade = match levels[(r as usize) % levels.len()] {
                        Level::Primary => 1 + ((r - 1) % 6) as u8,
                        Level::Junior => 7 + ((r - 1) % 3) as u8,
                    };
                    classrooms.push(Classroom {
                        terminal: format!("t-{cid}"),
                        device_id: format!("{cid}-d1"),
                        id: cid,
                        school: id.clone(),
                        city: city.clone(),
                        equipment,
                        shared_lab,
                        recording_room,
                        grade,
                    });
                }
                let teachers = (1..=12).map(|t| format!("{id}-t{t:02}")).collect();
                for level in &levels {
                    registry.push(registry_row(&mut rng, &id, &city, &county, &alliance, locale, *level, strong, n));
                }
                schools.push(SimSchool {
                    id,
                    city: city.clone(),
                    county,
                    alliance: alliance.clone(),
                    zone: String::new(),
                    locale,
                    strong,
                    levels,
                    classrooms,
                    teachers,
                    vigour,
                });
            }
        }
    }
    assign_zones(&mut schools);
    for row in &mut registry {
        row.zone = schools.iter().find(|s| s.id == row.school_id).expect("row of a school").zone.clone();
    }
    let resources = seed_resources(&mut rng, &schools);
    Province { spec: spec.clone(), schools, registry, resources }
}

/// Zones: inside each county, schools sorted by vigour are dealt round-robin into zones of
/// about 5, so every zone mixes strong and weak schools (the plans' "complementary" zones).
fn assign_zones(schools: &mut [SimSchool]) {
    let mut counties: Vec<String> = schools.iter().map(|s| s.county.clone()).collect();
    counties.sort();
    counties.dedup();
    for county in counties {
        let mut idx: Vec<usize> = (0..schools.len()).filter(|&i| schools[i].county == county).collect();
        idx.sort_by(|&a, &b| schools[b].vigour.total_cmp(&schools[a].vigour).then(a.cmp(&b)));
        let zones = idx.len().div_ceil(5).max(1);
        for (pos, i) in idx.into_iter().enumerate() {
            schools[i].zone = format!("{county}-z{}", 1 + pos % zones);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn registry_row(
    rng: &mut StdRng,
    id: &str,
    city: &str,
    county: &str,
    alliance: &str,
    locale: Locale,
    level: Level,
    strong: bool,
    n: u32,
) -> School {
    let enrolment = match locale {
        Locale::Urban => rng.random_range(1200..2000),
        Locale::Town => rng.random_range(600..1000),
        Locale::Rural => rng.random_range(150..400),
    } as f64;
    // Per-pupil rates; small rural schools need more teachers per pupil but have fewer key and
    // senior-title teachers (domain.md: senior titles 32% urban vs 15% rural).
    let (teachers_per_100, qualified, key, pe_art, senior, floor, sports, equip, media, funding) = match locale {
        Locale::Urban => (6.0, 0.98, 0.12, 0.10, 0.32, 6.0, 5.0, 3000.0, 3.0, 12000.0),
        Locale::Town => (6.5, 0.93, 0.06, 0.08, 0.22, 7.0, 8.0, 2000.0, 2.5, 10500.0),
        Locale::Rural => (8.0, 0.85, 0.03, 0.05, 0.15, 9.0, 12.0, 1200.0, 2.0, 9000.0),
    };
    let boost = if strong { 1.15 } else { 1.0 };
    let teachers_total = (jitter(rng, enrolment * teachers_per_100 / 100.0, 0.1)).round().max(4.0);
    let share = |rng: &mut StdRng, s: f64| (teachers_total * (jitter(rng, s * boost, 0.15)).min(1.0)).round();
    let name_kind = match level {
        Level::Primary => "小学",
        Level::Junior => "初级中学",
    };
    let place = match locale {
        Locale::Urban => "城区",
        Locale::Town => "镇",
        Locale::Rural => "乡",
    };
    School {
        school_id: id.into(),
        school_name: format!("{city}市{place}第{n}{name_kind}"),
        city: city.into(),
        county: county.into(),
        alliance: alliance.into(),
        zone: String::new(),
        locale,
        level,
        enrolment: enrolment as u32,
        teachers_total: teachers_total as u32,
        teachers_qualified: share(rng, qualified) as u32,
        key_teachers: share(rng, key) as u32,
        pe_art_teachers: share(rng, pe_art) as u32,
        senior_title_teachers: share(rng, senior) as u32,
        floor_area_m2: (jitter(rng, enrolment * floor, 0.15)).round(),
        sports_area_m2: (jitter(rng, enrolment * sports, 0.2)).round(),
        equipment_value_yuan: (jitter(rng, enrolment * equip * boost, 0.2)).round(),
        multimedia_classrooms: (jitter(rng, enrolment * media / 100.0, 0.2)).round().max(1.0) as u32,
        funding_yuan: (jitter(rng, enrolment * funding * boost, 0.1)).round(),
        strong,
    }
}

fn seed_resources(rng: &mut StdRng, schools: &[SimSchool]) -> Vec<Resource> {
    use edubrain_schemas::event::ResourceKind::*;
    let kinds = [Lesson, LessonDesign, MicroLesson, Courseware];
    let mut out = Vec::new();
    for s in schools {
        let count = if s.strong {
            30
        } else if s.locale == Locale::Urban {
            10
        } else if s.locale == Locale::Town {
            5
        } else {
            2
        };
        for i in 0..count {
            out.push(Resource {
                id: format!("{}-res{i:03}", s.id),
                owner_school: s.id.clone(),
                subject: SUBJECTS[rng.random_range(0..SUBJECTS.len())].into(),
                kind: kinds[rng.random_range(0..kinds.len())],
                quality: (s.vigour * rng.random_range(0.7..1.1)).clamp(0.05, 1.0),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_province_has_the_demo_shape() {
        let p = build(&ProvinceSpec::default());
        assert_eq!(p.schools.len(), 40);
        assert_eq!(p.classrooms().count(), 400);
        let alliances: std::collections::BTreeSet<_> = p.schools.iter().map(|s| &s.alliance).collect();
        assert_eq!(alliances.len(), 4);
        // Each alliance has exactly one strong school, and it is urban.
        for a in alliances {
            let strong: Vec<_> = p.schools.iter().filter(|s| &s.alliance == a && s.strong).collect();
            assert_eq!(strong.len(), 1);
            assert_eq!(strong[0].locale, Locale::Urban);
        }
        // Zones hold 5-10 schools (the plan's size) and never cross a county.
        let mut zones = std::collections::BTreeMap::<&str, Vec<&SimSchool>>::new();
        for s in &p.schools {
            zones.entry(&s.zone).or_default().push(s);
        }
        for (z, members) in zones {
            assert!((3..=10).contains(&members.len()), "{z}: {}", members.len());
            assert!(members.iter().all(|m| m.county == members[0].county));
        }
        // The registry is valid by the contract's own parser.
        let mut csv = Vec::new();
        edubrain_schemas::registry::write_csv(&p.registry, &mut csv).unwrap();
        assert_eq!(edubrain_schemas::registry::read_csv(csv.as_slice()).unwrap(), p.registry);
    }

    #[test]
    fn same_seed_same_province() {
        assert_eq!(build(&ProvinceSpec::default()), build(&ProvinceSpec::default()));
        let other = build(&ProvinceSpec { seed: 7, ..Default::default() });
        assert_ne!(other.registry, build(&ProvinceSpec::default()).registry);
    }

    #[test]
    fn urban_schools_have_more_senior_titles_than_rural() {
        let p = build(&ProvinceSpec::default());
        let share = |l: Locale| {
            let rows: Vec<_> = p.registry.iter().filter(|r| r.locale == l).collect();
            rows.iter().map(|r| r.senior_title_teachers as f64).sum::<f64>() / rows.iter().map(|r| r.teachers_total as f64).sum::<f64>()
        };
        assert!(share(Locale::Urban) > share(Locale::Rural) + 0.08);
    }
}
