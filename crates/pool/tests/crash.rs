//! Crash consistency: random workloads (writes, flushes, snapshots, clones, reverts, deletes)
//! on a pool over a device that separates volatile from durable writes; "crash" at random
//! points keeping a random subset of unflushed writes (some torn at sector boundaries),
//! re-import, and compare with a reference model:
//! - every metadata operation that returned is there, every other one is not;
//! - every sector holds its value at the last completed flush, or a value written after it;
//! - `check` finds nothing wrong.
//!
//! Half the cases use a pool over two devices, crashed together.
//!
//! `POOL_CRASH_CASES` sets the number of cases (default 300, three crashes each).

mod common;

use common::run;
use std::collections::BTreeMap;
use std::sync::Arc;

use blockdev::crash::CrashDevice;
use blockdev::{Device, IoBuf, WriteFlags};
use pool::pool::{CreateOptions, Pool};

const SECTOR: usize = 512;
const GARBAGE: u8 = 0xEE;
const BLOCK: usize = 4096;
const CLUSTER: u64 = 64 * 1024;
const VOL_SIZE: u64 = 4 * CLUSTER;
const SECTORS: usize = VOL_SIZE as usize / SECTOR;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Clone)]
struct VolModel {
    snapshot: bool,
    durable: Vec<u8>,
    since_flush: Vec<Vec<u8>>,
}

impl VolModel {
    fn new(snapshot: bool, content: Vec<u8>) -> VolModel {
        VolModel {
            snapshot,
            durable: content,
            since_flush: vec![Vec::new(); SECTORS],
        }
    }
    fn live(&self) -> Vec<u8> {
        self.durable
            .iter()
            .zip(&self.since_flush)
            .map(|(&d, s)| s.last().copied().unwrap_or(d))
            .collect()
    }
}

#[derive(Default, Clone)]
struct Model {
    vols: BTreeMap<String, VolModel>,
}

impl Model {
    fn flush(&mut self) {
        for v in self.vols.values_mut() {
            *v = VolModel::new(v.snapshot, v.live());
        }
    }
}

async fn verify(pool: &Arc<Pool>, model: &mut Model, ctx: &str) {
    let problems = pool.check();
    assert!(problems.is_empty(), "{ctx}: check found {problems:?}");
    let mut names: Vec<String> = pool.list().into_iter().map(|v| v.name).collect();
    names.sort();
    let want: Vec<String> = model.vols.keys().cloned().collect();
    assert_eq!(names, want, "{ctx}: volumes after import");
    for (name, vm) in model.vols.iter_mut() {
        let dev = pool.open(name).unwrap();
        let data = dev.read(0, IoBuf::zeroed(VOL_SIZE as usize)).await.unwrap();
        let mut seen = Vec::with_capacity(SECTORS);
        for s in 0..SECTORS {
            let sec = &data[s * SECTOR..(s + 1) * SECTOR];
            assert!(
                sec.iter().all(|&b| b == sec[0]),
                "{ctx}: {name} sector {s} is not uniform"
            );
            let v = sec[0];
            assert!(
                v == vm.durable[s] || vm.since_flush[s].contains(&v),
                "{ctx}: {name} sector {s} reads {v:#x}; durable {:#x}, written since {:?}",
                vm.durable[s],
                vm.since_flush[s]
            );
            seen.push(v);
        }
        // What survived is now the durable truth.
        *vm = VolModel::new(vm.snapshot, seen);
    }
}

/// One random operation against the pool, mirrored in the model.
async fn step(pool: &Arc<Pool>, model: &mut Model, rng: &mut Rng, next: &mut u32) {
    {
        let names: Vec<String> = model.vols.keys().cloned().collect();
        let vols: Vec<String> = model
            .vols
            .iter()
            .filter(|(_, v)| !v.snapshot)
            .map(|(n, _)| n.clone())
            .collect();
        let snaps: Vec<String> = model
            .vols
            .iter()
            .filter(|(_, v)| v.snapshot)
            .map(|(n, _)| n.clone())
            .collect();
        match rng.below(12) {
            0 | 1 if model.vols.len() < 8 => {
                *next += 1;
                let name = format!("v{next}");
                pool.create_volume(&name, VOL_SIZE, rng.below(3) != 0)
                    .await
                    .unwrap();
                model.flush();
                model
                    .vols
                    .insert(name, VolModel::new(false, vec![0; SECTORS]));
            }
            2..=6 if !vols.is_empty() => {
                let name = &vols[rng.below(vols.len())];
                let block = rng.below(SECTORS * SECTOR / BLOCK);
                let byte = match (rng.below(254) + 1) as u8 {
                    GARBAGE => 0x11,
                    b => b,
                };
                let fua = rng.below(8) == 0;
                let d = pool.open(name).unwrap();
                d.write(
                    (block * BLOCK) as u64,
                    IoBuf::from_slice(&[byte; BLOCK]),
                    WriteFlags { fua },
                )
                .await
                .unwrap();
                // FUA makes this write durable (and may make more so); nothing else is promised.
                let vm = model.vols.get_mut(name).unwrap();
                for s in block * 8..block * 8 + 8 {
                    if fua {
                        vm.durable[s] = byte;
                        vm.since_flush[s].clear();
                    } else {
                        vm.since_flush[s].push(byte);
                    }
                }
            }
            7 if !names.is_empty() => {
                pool.open(&names[0]).unwrap().flush().await.unwrap();
                model.flush();
            }
            8 if !vols.is_empty() && model.vols.len() < 8 => {
                *next += 1;
                let src = &vols[rng.below(vols.len())];
                let name = format!("s{next}");
                pool.snapshot(src, &name).await.unwrap();
                model.flush();
                let content = model.vols[src].durable.clone();
                model.vols.insert(name, VolModel::new(true, content));
            }
            9 if !snaps.is_empty() && model.vols.len() < 8 => {
                *next += 1;
                let s = &snaps[rng.below(snaps.len())];
                let name = format!("c{next}");
                pool.clone_snapshot(s, &name).await.unwrap();
                model.flush();
                let content = model.vols[s].durable.clone();
                model.vols.insert(name, VolModel::new(false, content));
            }
            10 if !snaps.is_empty() && !vols.is_empty() => {
                let s = &snaps[rng.below(snaps.len())];
                let v = &vols[rng.below(vols.len())];
                pool.revert(v, s).await.unwrap();
                model.flush();
                let content = model.vols[s].durable.clone();
                model.vols.insert(v.clone(), VolModel::new(false, content));
            }
            11 if !names.is_empty() => {
                let n = &names[rng.below(names.len())];
                pool.delete(n).await.unwrap();
                model.flush();
                model.vols.remove(n);
            }
            _ => {}
        }
    }
}

/// Runs one case; returns whether data reached a second member.
async fn case(seed: u64) -> bool {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // The disk starts full of old garbage: a mapped cluster whose data never reached the disk
    // reads as 0xEE, which no write in this test produces. Even seeds use a pool over two
    // devices, the first small enough that data lands on both.
    let sizes: &[usize] = if seed.is_multiple_of(2) {
        &[8 << 20, 6 << 20]
    } else {
        &[12 << 20]
    };
    let mut disks: Vec<Arc<CrashDevice>> = sizes
        .iter()
        .map(|&n| Arc::new(CrashDevice::from_image(vec![GARBAGE; n])))
        .collect();
    let devs = |disks: &[Arc<CrashDevice>]| -> Vec<Device> {
        disks.iter().map(|d| d.clone() as Device).collect()
    };
    let mut pool = Pool::create_on(
        devs(&disks),
        &CreateOptions {
            cluster_size: CLUSTER as u32,
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    let mut model = Model::default();
    let mut next = 0;
    for round in 0..3 {
        for _ in 0..rng.below(40) + 5 {
            step(&pool, &mut model, &mut rng, &mut next).await;
        }
        // Crash, on every member at once: each unflushed write is kept, torn or lost.
        drop(pool);
        disks = disks
            .iter()
            .map(|d| {
                let image = d.crash_image(|_, sectors| match rng.below(3) {
                    0 => 0,
                    1 => sectors,
                    _ => rng.below(sectors + 1),
                });
                Arc::new(CrashDevice::from_image(image))
            })
            .collect();
        pool = match Pool::import_members(devs(&disks)).await {
            Ok(p) => p,
            Err(e) => panic!("seed {seed} round {round}: import failed: {e}"),
        };
        verify(&pool, &mut model, &format!("seed {seed} round {round}")).await;
    }
    disks.get(1).is_some_and(|d| {
        let img = d.crash_image(|_, _| 0);
        img[CLUSTER as usize..].iter().any(|&b| b != GARBAGE)
    })
}

#[test]
fn crashes_at_random_points_lose_only_unflushed_writes() {
    let cases = cases();
    run(move || async move {
        let mut second = 0;
        for seed in 1..=cases {
            second += case(seed).await as u32;
        }
        assert!(
            cases < 10 || second > 0,
            "no case put data on a pool's second device"
        );
    });
}

fn cases() -> u64 {
    std::env::var("POOL_CRASH_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

/// After a crash during an operation: the pool is the state before it or after it.
async fn verify_either(pool: &Arc<Pool>, before: &Model, after: &Model, ctx: &str) {
    let problems = pool.check();
    assert!(problems.is_empty(), "{ctx}: check found {problems:?}");
    let mut names: Vec<String> = pool.list().into_iter().map(|v| v.name).collect();
    names.sort();
    let b: Vec<String> = before.vols.keys().cloned().collect();
    let a: Vec<String> = after.vols.keys().cloned().collect();
    assert!(
        names == b || names == a,
        "{ctx}: volumes {names:?}, before {b:?}, after {a:?}"
    );
    for name in &names {
        let dev = pool.open(name).unwrap();
        let data = dev.read(0, IoBuf::zeroed(VOL_SIZE as usize)).await.unwrap();
        for s in 0..SECTORS {
            let sec = &data[s * SECTOR..(s + 1) * SECTOR];
            assert!(
                sec.iter().all(|&x| x == sec[0]),
                "{ctx}: {name} sector {s} not uniform"
            );
            let mut allowed = Vec::new();
            for m in [before, after] {
                if let Some(v) = m.vols.get(name) {
                    allowed.push(v.durable[s]);
                    allowed.extend(&v.since_flush[s]);
                }
            }
            assert!(
                allowed.contains(&sec[0]),
                "{ctx}: {name} sector {s} reads {:#x}, allowed {allowed:?}",
                sec[0]
            );
        }
    }
}

async fn flush_point_case(seed: u64) -> bool {
    let mut rng = Rng(seed.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1);
    let disk = Arc::new(CrashDevice::from_image(vec![GARBAGE; 12 << 20]));
    let dev: Device = disk.clone();
    let pool = Pool::create(
        dev,
        &CreateOptions {
            cluster_size: CLUSTER as u32,
            ..CreateOptions::default()
        },
    )
    .await
    .unwrap();
    let mut model = Model::default();
    let mut next = 0;
    let mut armed = false;
    for _ in 0..80 {
        if !armed && rng.below(6) == 0 {
            disk.arm(rng.below(3) as u32 + 1, rng.next());
            armed = true;
        }
        let before = model.clone();
        step(&pool, &mut model, &mut rng, &mut next).await;
        if let Some(img) = disk.take_captured() {
            let crashed = Pool::import(Arc::new(CrashDevice::from_image(img)))
                .await
                .unwrap_or_else(|e| {
                    panic!("seed {seed}: import after a crash inside an operation: {e}")
                });
            verify_either(
                &crashed,
                &before,
                &model,
                &format!("flush-point seed {seed}"),
            )
            .await;
            return true;
        }
    }
    false
}

#[test]
fn crashes_inside_operations_at_flush_points_leave_before_or_after() {
    let cases = cases();
    run(move || async move {
        let mut crashed = 0;
        for seed in 1..=cases {
            crashed += flush_point_case(seed).await as u64;
        }
        assert!(
            crashed * 2 > cases,
            "only {crashed} of {cases} cases reached their crash"
        );
    });
}
