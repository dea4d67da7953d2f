//! Coalescing: identical requests share one upstream call. The first is
//! the leader: its call runs on a task of its own ([`leader`]) and its
//! frames are kept in a [`Coalesced`] call as they come. Those who arrive
//! while it runs are followers ([`follower`]): each reads the frames from
//! the first, live, as the leader's client does. The call goes on while
//! anyone still reads and stops when nobody does; a follower whose leader
//! failed before its answer's head calls on its own.

mod call;
mod follower;
mod leader;

pub(crate) use call::Coalesced;
pub(crate) use follower::{follow, respond_from};
pub(crate) use leader::{lead, Keeping};
