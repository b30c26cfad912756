//! `AdminService`: case timelines, case queries, timeliness statistics (summed from the
//! counters the writer keeps; on request with the ids behind every figure, so it can be traced
//! to timelines), and the sandbox clock.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::status::{self, invalid};
use super::{authorize, check, date, page, view, Shared};
use crate::auth::{Right, Seen};
use crate::clock::{self, Millis};
use crate::domain;
use crate::domain::figures::{self, Figure as Fig, Group, Side};
use crate::proto::admin_service_server::AdminService;
use crate::proto::{
    AdvanceClockReply, AdvanceClockRequest, ApprovalFigures, CalendarStatusReply, CalendarStatusRequest, Figure,
    GetStatisticsReply, GetStatisticsRequest, GetTimelineReply, GetTimelineRequest, LoadCalendarReply,
    LoadCalendarRequest, QueryCasesReply, QueryCasesRequest, SupervisionFigures,
};
use crate::store::figures::CounterQuery;
use crate::store::Filter;

/// The service.
pub struct Admin {
    shared: Arc<Shared>,
}

impl Admin {
    /// Over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Admin { shared }
    }

    /// The instant a local date starts in the region (for date-range filters).
    fn start_of(&self, region: &str, field: &str, text: &str) -> Result<Millis, Status> {
        let d = date(field, text)?;
        let calendars = self.shared.calendars();
        let calendar = calendars.region(region);
        calendar.at_time(d, chrono::NaiveTime::MIN).map(clock::from_datetime).map_err(|e| invalid(field, e))
    }

    fn end_of(&self, region: &str, field: &str, text: &str) -> Result<Millis, Status> {
        let d = date(field, text)?;
        let next = d.succ_opt().ok_or_else(|| invalid(field, "is out of range"))?;
        self.start_of(region, field, &next.to_string())
    }
}

const MAX_ADVANCE: Millis = 10 * 366 * 24 * 3_600_000;

/// The most cases and tasks GetStatistics lists ids for: its reply and its memory stay bounded.
const MAX_IDS: u64 = 10_000;

/// Figures per group, each with its count and (when asked for) its ids.
type Sheet = BTreeMap<Group, BTreeMap<Fig, (u64, Vec<String>)>>;

/// The farthest a "commitments due soon" query looks, in working days (three months).
const MAX_DUE_WITHIN: u32 = 60;

/// Most dead letters one bulk retry or discard changes.
const MAX_BULK: usize = 10_000;

impl Admin {
    /// The dead letters `selection` names (at most [`MAX_BULK`]; the flag says more matched).
    async fn select_dead_letters(
        &self,
        selection: &crate::proto::DeadLetterSelection,
    ) -> Result<(Vec<crate::store::StoredMessage>, bool), Status> {
        let read = |e: crate::store::Error| status::read_error(&e);
        if !selection.keys.is_empty() {
            if selection.keys.len() > MAX_BULK {
                return Err(invalid("keys", format!("at most {MAX_BULK}")));
            }
            let mut out = Vec::new();
            for key in &selection.keys {
                if key.is_empty() || key.len() > 512 {
                    return Err(invalid("keys", "a message key: <instance>:<seq>:<index>"));
                }
                let m = self
                    .shared
                    .reader
                    .message(key)
                    .await
                    .map_err(read)?
                    .ok_or_else(|| status::not_found("message", key))?;
                if m.status != crate::store::DeliveryState::Dead {
                    return Err(Status::failed_precondition(format!(
                        "message {key} is {}, not a dead letter",
                        m.status.as_str()
                    )));
                }
                out.push(m);
            }
            return Ok((out, false));
        }
        if selection.destination.is_empty() && !selection.all {
            return Err(invalid("selection", "name the keys, a destination (with since_ms, if you like), or all"));
        }
        if selection.destination.len() > 64 {
            return Err(invalid("destination", "at most 64 characters"));
        }
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.shared.reader.dead_letters(after, 1_000).await.map_err(read)?;
            let Some(last) = page.last() else { return Ok((out, false)) };
            after = last.id;
            for m in page {
                let here = selection.destination.is_empty()
                    || m.destination.as_deref() == Some(selection.destination.as_str());
                let recent = selection.since_ms == 0 || m.delivered_at.unwrap_or(0) >= selection.since_ms;
                if here && recent {
                    if out.len() == MAX_BULK {
                        return Ok((out, true));
                    }
                    out.push(m);
                }
            }
        }
    }

    /// Retries or discards the dead letters `selection` names, through the writer; then the
    /// destinations walk their messages again (a released case goes on, in order).
    async fn change_dead_letters(
        &self,
        selection: crate::proto::DeadLetterSelection,
        change: fn(Vec<String>) -> crate::writer::Outbound,
        done: &str,
    ) -> Result<crate::proto::DeadLettersChanged, Status> {
        let (messages, more) = self.select_dead_letters(&selection).await?;
        let destinations: std::collections::BTreeSet<String> =
            messages.iter().map(|m| m.destination.clone().unwrap_or_default()).collect();
        let keys: Vec<String> = messages.into_iter().map(|m| m.key).collect();
        // A thousand a write, each durable before the next: answered once all are.
        for chunk in keys.chunks(1_000) {
            self.shared
                .engine
                .handle()
                .outbound(change(chunk.to_vec()))
                .await
                .map_err(|e| status::write_error("message", &chunk[0], &e))?;
        }
        self.shared.dispatchers.rescan();
        tracing::info!(count = keys.len(), more, ?destinations, "dead letters {done}");
        Ok(crate::proto::DeadLettersChanged { keys, more })
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    async fn load_calendar(
        &self,
        request: Request<LoadCalendarRequest>,
    ) -> Result<Response<LoadCalendarReply>, Status> {
        let who = authorize(&self.shared, &request, Right::LoadCalendar)?;
        let actor = format!("{} ({})", who.caller(), who.grant.role);
        super::calendar::load(&self.shared, request.into_inner(), actor).await.map(Response::new)
    }

    async fn calendar_status(
        &self,
        request: Request<CalendarStatusRequest>,
    ) -> Result<Response<CalendarStatusReply>, Status> {
        authorize(&self.shared, &request, Right::CalendarStatus)?;
        super::calendar::status(&self.shared, self.shared.calendar_warn_from).await.map(Response::new)
    }

    async fn get_timeline(&self, request: Request<GetTimelineRequest>) -> Result<Response<GetTimelineReply>, Status> {
        let who = authorize(&self.shared, &request, Right::ReadCases)?;
        let case_id = super::intake::scoped_case_id(&self.shared, &who, "case_id", &request.get_ref().case_id)?;
        let reader = &self.shared.reader;
        let Some(case) = reader
            .instance(&case_id)
            .await
            .map_err(|e| status::read_error(&e))?
            .filter(|r| r.workflow == domain::CASE_WORKFLOW)
        else {
            return Err(super::intake::case_not_found(&self.shared, &case_id).await);
        };
        let tasks = super::intake::tasks_of(reader.as_ref(), &case_id).await?;
        super::intake::require_case(&self.shared, &who, &case, &tasks)?;
        let mut rows = vec![case];
        rows.extend(tasks);
        let mut entries = Vec::new();
        for (order, row) in rows.iter().enumerate() {
            let history = reader.history(&row.id).await.map_err(|e| status::read_error(&e))?;
            let outbox = reader.outbox_of(&row.id).await.map_err(|e| status::read_error(&e))?;
            let steps = view::timeline(self.shared.registry(), row, &history, &outbox);
            entries.extend(steps.into_iter().map(|e| (order, e)));
        }
        // Oldest first; within one instant the case before its tasks, each in history order.
        entries.sort_by_key(|(order, e)| (e.at.as_ref().map_or(0, |a| a.unix_millis), *order, e.seq));
        Ok(Response::new(GetTimelineReply { case_id, entries: entries.into_iter().map(|(_, e)| e).collect() }))
    }

    async fn query_cases(&self, request: Request<QueryCasesRequest>) -> Result<Response<QueryCasesReply>, Status> {
        let who = authorize(&self.shared, &request, Right::ReadCases)?;
        let r = request.into_inner();
        let (size, after) = page(r.page.as_ref())?;
        let mut filter =
            Filter { workflow: domain::CASE_WORKFLOW.into(), after, limit: Some(size), ..Filter::default() };
        // Filtered to the caller's scope, never refused.
        who.scope().limit_cases(&mut filter);
        let region = if r.region_code.is_empty() { "national".to_owned() } else { r.region_code.clone() };
        if !r.region_code.is_empty() {
            check("region_code", domain::check_region(&r.region_code))?;
            filter.in_region(&r.region_code);
        }
        if !r.approval_department.is_empty() {
            check("approval_department", domain::check_text(&r.approval_department, 128))?;
            let catalogs = self.shared.context().catalogs.current();
            let names = catalogs.department_names(&r.approval_department, |region| who.scope().has_region(region));
            filter.vars_in.push(("approval_department".into(), names));
        }
        if !r.applicant_code.is_empty() {
            check("applicant_code", domain::check_text(&r.applicant_code, 18))?;
            filter.vars.push(("applicant_code".into(), r.applicant_code.to_ascii_uppercase()));
        }
        if !r.state.is_empty() {
            let def = self
                .shared
                .registry()
                .latest(domain::CASE_WORKFLOW)
                .ok_or_else(|| status::missing_workflow(domain::CASE_WORKFLOW))?;
            if def.state(&r.state).is_none() {
                let states: Vec<&str> = def.states.iter().map(|s| s.name.as_str()).collect();
                return Err(invalid("state", format!("unknown state {:?}; one of {}", r.state, states.join(", "))));
            }
            filter.state = Some(r.state.clone());
        }
        if !r.route.is_empty() {
            if !domain::ROUTES.contains(&r.route.as_str()) {
                let routes = domain::ROUTES.join(" or ");
                return Err(invalid("route", format!("{:?} is not a route: {routes}", r.route)));
            }
            filter.vars.push(("route".into(), r.route.clone()));
        }
        if r.commitment_due_within_working_days > 0 {
            let n = r.commitment_due_within_working_days;
            if n > MAX_DUE_WITHIN {
                return Err(invalid(
                    "commitment_due_within_working_days",
                    format!("{n} is more than {MAX_DUE_WITHIN} working days"),
                ));
            }
            let calendars = self.shared.calendars();
            let calendar = calendars.region(&region);
            let today = self.shared.today(calendar);
            let due_by =
                calendar.add_working_days(today, n).map_err(|e| invalid("commitment_due_within_working_days", e))?;
            // Waiting for the materials: the states the reminder and the deadline run in.
            filter.states_in = domain::COMMITMENT_WAITING.iter().map(|s| (*s).to_owned()).collect();
            filter.vars_at_most.push(("commitment_deadline".into(), due_by.to_string()));
        }
        if r.provisional_only {
            filter.provisional = true;
            filter.provisional_var = Some(domain::COMMITMENT_PROVISIONAL.to_owned());
        }
        if r.overdue_only {
            // The definition of view::case_overdue, in SQL.
            filter.any_true = vec![domain::CASE_BREACH.into()];
            filter.any_task_true = domain::TASK_BREACHES.iter().map(|s| (*s).to_owned()).collect();
            filter.task_workflow = domain::TASK_WORKFLOW.to_owned();
        }
        if !r.accepted_from.is_empty() {
            filter.created_from = Some(self.start_of(&region, "accepted_from", &r.accepted_from)?);
        }
        if !r.accepted_to.is_empty() {
            filter.created_before = Some(self.end_of(&region, "accepted_to", &r.accepted_to)?);
        }
        let rows = self.shared.reader.list(&filter).await.map_err(|e| status::read_error(&e))?;
        let full = rows.len() as u32 == size;
        let next_page_token = super::next_token(rows.last().map(|r| r.id.as_str()), full);
        let mut cases = Vec::with_capacity(rows.len());
        for row in &rows {
            let tasks = super::intake::tasks_of(self.shared.reader.as_ref(), &row.id).await?;
            cases.push(view::case(self.shared.registry(), row, &tasks));
        }
        Ok(Response::new(QueryCasesReply { cases, next_page_token }))
    }

    async fn get_statistics(
        &self,
        request: Request<GetStatisticsRequest>,
    ) -> Result<Response<GetStatisticsReply>, Status> {
        let who = authorize(&self.shared, &request, Right::Statistics)?;
        let scope = who.scope().clone();
        let r = request.into_inner();
        let region = if r.region_code.is_empty() {
            "national".to_owned()
        } else {
            check("region_code", domain::check_region(&r.region_code))?;
            r.region_code.clone()
        };
        // An empty period is this year, on the server's clock (the sandbox clock in sandbox mode).
        let year = {
            use chrono::Datelike;
            self.shared.today(self.shared.calendars().region(&region)).year()
        };
        let from_text = if r.from.is_empty() { format!("{year}-01-01") } else { r.from.clone() };
        let to_text = if r.to.is_empty() { format!("{year}-12-31") } else { r.to.clone() };
        let from = self.start_of(&region, "from", &from_text)?;
        let to = self.end_of(&region, "to", &to_text)?;
        if to <= from {
            return Err(invalid("to", "is before from"));
        }
        let (first, last) = (date("from", &from_text)?, date("to", &to_text)?);
        let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        // A department or office asked by code or by name is counted under either.
        let catalogs = self.shared.context().catalogs.current();
        let departments =
            given(&r.department).map(|d| catalogs.department_names(&d, |region| scope.has_region(region)));
        let offices = given(&r.office).map(|o| catalogs.office_names(&o, departments.as_deref()));
        let wanted = |g: &Group| {
            // Only the caller's scope is counted (figures are filtered, never refused).
            scope.sees(&Seen::figures(g))
                && given(&r.region_code).is_none_or(|x| x == g.region)
                && departments.as_ref().is_none_or(|names| names.contains(&g.department))
                && (g.side == Side::Approval || offices.as_ref().is_none_or(|names| names.contains(&g.office)))
        };
        // One name narrows the read; several are told apart by `wanted`.
        let only = |names: &Option<Vec<String>>| names.as_ref().filter(|n| n.len() == 1).map(|n| n[0].clone());
        let query = CounterQuery {
            cover: figures::cover(first, last),
            region: given(&r.region_code),
            department: only(&departments),
            office: only(&offices),
        };
        let reader = &self.shared.reader;
        let summed = reader.figure_counts(&query).await.map_err(|e| status::read_error(&e))?;
        let mut sheet: Sheet = BTreeMap::new();
        for s in summed.into_iter().filter(|s| wanted(&s.group)) {
            sheet.entry(s.group).or_default().insert(s.figure, (s.n, Vec::new()));
        }
        if r.with_ids {
            let behind: u64 = sheet
                .values()
                .flat_map(|f| [f.get(&Fig::Tasks), f.get(&Fig::Cases)])
                .map(|n| n.map_or(0, |(n, _)| *n))
                .sum();
            if behind > MAX_IDS {
                return Err(Status::failed_precondition(format!(
                    "the period holds {behind} cases and tasks in your scope; ids are listed for at most \
                     {MAX_IDS}: narrow the period, region, department or office, or ask for counts only"
                )));
            }
            // The counts then come from the rows read, so each equals its number of ids.
            sheet = BTreeMap::new();
            let (created_from, created_before) =
                (figures::start_of(first), last.succ_opt().and_then(figures::start_of));
            let read = |workflow: &str| {
                // `wanted` decides; these only narrow the read to the rows it may keep.
                let (department_var, office) = match workflow {
                    domain::TASK_WORKFLOW => ("department", offices.as_ref()),
                    _ => ("approval_department", None),
                };
                let vars_in = [(department_var, departments.as_ref()), ("office", office)]
                    .into_iter()
                    .filter_map(|(var, names)| Some((var.to_owned(), names?.clone())))
                    .collect();
                let filter = Filter {
                    workflow: workflow.into(),
                    vars: query.region.iter().map(|x| ("region".to_owned(), x.clone())).collect(),
                    vars_in,
                    created_from,
                    created_before,
                    region_prefix: scope.id_prefix(),
                    ..Filter::default()
                };
                async move { reader.list(&filter).await }
            };
            // Two connections, one per workflow: a month at a million cases is 170,000 rows.
            let (tasks, cases) = tokio::try_join!(read(domain::TASK_WORKFLOW), read(domain::CASE_WORKFLOW))
                .map_err(|e| status::read_error(&e))?;
            for row in tasks.iter().chain(&cases) {
                let Some(c) = figures::counted(row) else { continue };
                if !wanted(&c.group) {
                    continue;
                }
                let entry = sheet.entry(c.group).or_default();
                for f in c.figures {
                    let (n, ids) = entry.entry(f).or_default();
                    *n += 1;
                    ids.push(row.id.clone());
                }
            }
        }
        let mut reply = GetStatisticsReply::default();
        for (group, mut figs) in sheet {
            let mut take = |f: Fig| {
                let (count, ids) = figs.remove(&f).unwrap_or_default();
                Some(Figure { count, ids })
            };
            match group.side {
                Side::Supervision => reply.supervision.push(SupervisionFigures {
                    tasks: take(Fig::Tasks),
                    viewed_in_time: take(Fig::ViewedInTime),
                    viewed_late: take(Fig::ViewedLate),
                    view_overdue: take(Fig::ViewOverdue),
                    results_in_time: take(Fig::ResultsInTime),
                    results_late: take(Fig::ResultsLate),
                    result_overdue: take(Fig::ResultOverdue),
                    rectifications_ordered: take(Fig::RectificationsOrdered),
                    rectified: take(Fig::Rectified),
                    rectification_failed: take(Fig::RectificationFailed),
                    revocations_decided: take(Fig::RevocationsDecided),
                    region_code: group.region,
                    department: group.department,
                    office: group.office,
                }),
                Side::Approval => reply.approval.push(ApprovalFigures {
                    cases: take(Fig::Cases),
                    commitments: take(Fig::Commitments),
                    commitments_fulfilled: take(Fig::CommitmentsFulfilled),
                    commitments_overdue: take(Fig::CommitmentsOverdue),
                    commitments_revoked: take(Fig::CommitmentsRevoked),
                    revoked: take(Fig::Revoked),
                    region_code: group.region,
                    department: group.department,
                }),
            }
        }
        Ok(Response::new(reply))
    }

    async fn advance_clock(
        &self,
        request: Request<AdvanceClockRequest>,
    ) -> Result<Response<AdvanceClockReply>, Status> {
        authorize(&self.shared, &request, Right::AdvanceClock)?;
        let Some(clock) = &self.shared.virtual_clock else {
            return Err(status::not_a_sandbox());
        };
        let r = request.into_inner();
        let now = match (r.by_millis, r.to.is_empty()) {
            (by, true) if by > 0 && by <= MAX_ADVANCE => clock.advance(by),
            (by, true) => {
                return Err(invalid("by_millis", format!("{by} must be between 1 and {MAX_ADVANCE} (ten years)")))
            }
            (0, false) => {
                let to = chrono::DateTime::parse_from_rfc3339(&r.to)
                    .map_err(|_| invalid("to", format!("{:?} is not an RFC 3339 instant", r.to)))?
                    .timestamp_millis();
                let current = crate::clock::Clock::now(clock);
                if to < current {
                    return Err(invalid(
                        "to",
                        format!("{} is before the current time {}", r.to, clock::display(current)),
                    ));
                }
                if to - current > MAX_ADVANCE {
                    return Err(invalid("to", "is more than ten years ahead"));
                }
                clock.advance_to(to)
            }
            _ => return Err(invalid("by_millis", "give by_millis or to, not both")),
        };
        // Answer once everything due by the new time has fired and committed — and the
        // spot-check runs that fell due are drawn, with what their tasks' timers do.
        self.shared.engine.settle().await;
        match self.shared.spotchecks.run_due().await {
            Ok(0) => {}
            Ok(_) => self.shared.engine.settle().await,
            Err(e) => tracing::warn!(error = %e, "cannot draw the spot-check runs due"),
        }
        Ok(Response::new(AdvanceClockReply { now: Some(view::instant(now)) }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<crate::proto::ListDeadLettersRequest>,
    ) -> Result<Response<crate::proto::ListDeadLettersReply>, Status> {
        let who = authorize(&self.shared, &request, Right::DeadLetters)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 100,
            n if n > 1_000 => return Err(invalid("limit", "at most 1000")),
            n => n,
        };
        let mut rows = self.shared.reader.dead_letters(r.after_id, limit).await.map_err(|e| status::read_error(&e))?;
        if !who.scope().is_everywhere() {
            let mut kept = Vec::with_capacity(rows.len());
            for m in rows {
                let seen = crate::auth::visibility::load(self.shared.reader.as_ref(), &m.instance)
                    .await
                    .map_err(|e| status::read_error(&e))?;
                if seen.is_some_and(|(_, seen)| who.scope().sees(&seen)) {
                    kept.push(m);
                }
            }
            rows = kept;
        }
        let dead_letters = rows
            .iter()
            .map(|m| crate::proto::DeadLetter {
                id: m.id,
                destination: m.destination.clone().unwrap_or_default(),
                instance_id: m.instance.clone(),
                message: Some(view::outbound_message(m)),
                dead_at_ms: m.delivered_at.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(crate::proto::ListDeadLettersReply { dead_letters }))
    }

    async fn retry_dead_letter(
        &self,
        request: Request<crate::proto::RetryDeadLetterRequest>,
    ) -> Result<Response<crate::proto::RetryDeadLetterReply>, Status> {
        authorize(&self.shared, &request, Right::DeadLetters)?;
        let key = request.into_inner().key;
        if key.is_empty() || key.len() > 512 {
            return Err(invalid("key", "a message key: <instance>:<seq>:<index>"));
        }
        let m = self
            .shared
            .reader
            .message(&key)
            .await
            .map_err(|e| status::read_error(&e))?
            .ok_or_else(|| status::not_found("message", &key))?;
        if m.status != crate::store::DeliveryState::Dead {
            return Err(Status::failed_precondition(format!(
                "message {key} is {}, not a dead letter",
                m.status.as_str()
            )));
        }
        self.shared
            .engine
            .handle()
            .outbound(crate::writer::Outbound::Revive(vec![key.clone()]))
            .await
            .map_err(|e| status::write_error("message", &key, &e))?;
        let destination = m.destination.unwrap_or_default();
        self.shared.dispatchers.rescan();
        tracing::info!(%key, %destination, "dead letter retried");
        Ok(Response::new(crate::proto::RetryDeadLetterReply { key, destination }))
    }

    async fn retry_dead_letters(
        &self,
        request: Request<crate::proto::DeadLetterSelection>,
    ) -> Result<Response<crate::proto::DeadLettersChanged>, Status> {
        authorize(&self.shared, &request, Right::DeadLetters)?;
        let changed =
            self.change_dead_letters(request.into_inner(), crate::writer::Outbound::Revive, "retried").await?;
        Ok(Response::new(changed))
    }

    async fn discard_dead_letters(
        &self,
        request: Request<crate::proto::DeadLetterSelection>,
    ) -> Result<Response<crate::proto::DeadLettersChanged>, Status> {
        authorize(&self.shared, &request, Right::DeadLetters)?;
        let changed =
            self.change_dead_letters(request.into_inner(), crate::writer::Outbound::Discard, "discarded").await?;
        Ok(Response::new(changed))
    }

    async fn list_consumers(
        &self,
        request: Request<crate::proto::ListConsumersRequest>,
    ) -> Result<Response<crate::proto::ListConsumersReply>, Status> {
        authorize(&self.shared, &request, Right::Consumers)?;
        let read = |e: crate::store::Error| status::read_error(&e);
        let last_id = self.shared.reader.outbox_last_id().await.map_err(read)?;
        let consumers = self.shared.reader.consumers().await.map_err(read)?;
        let consumers = consumers
            .into_iter()
            .map(|c| crate::proto::Consumer {
                lag: last_id.saturating_sub(c.acked),
                name: c.name,
                owner: c.owner,
                acked: c.acked,
                channels: c.channels,
                last_read_ms: c.updated_at,
            })
            .collect();
        Ok(Response::new(crate::proto::ListConsumersReply { consumers, last_id }))
    }

    async fn drop_consumer(
        &self,
        request: Request<crate::proto::DropConsumerRequest>,
    ) -> Result<Response<crate::proto::DropConsumerReply>, Status> {
        authorize(&self.shared, &request, Right::Consumers)?;
        let name = request.into_inner().name;
        super::events::check_consumer(&name)?;
        let stored = self
            .shared
            .reader
            .consumer(&name)
            .await
            .map_err(|e| status::read_error(&e))?
            .ok_or_else(|| status::not_found("consumer", &name))?;
        self.shared
            .engine
            .handle()
            .outbound(crate::writer::Outbound::DropConsumer(name.clone()))
            .await
            .map_err(|e| status::write_error("consumer", &name, &e))?;
        self.shared.context().streams.end(&name, crate::outbound::live::Ended::Dropped);
        tracing::warn!(consumer = %name, acked = stored.acked, "stream consumer dropped: retention no longer keeps its messages");
        Ok(Response::new(crate::proto::DropConsumerReply { acked: stored.acked }))
    }

    async fn export_archive(
        &self,
        request: Request<crate::proto::ExportArchiveRequest>,
    ) -> Result<Response<crate::proto::ExportArchiveReply>, Status> {
        super::archive::export(&self.shared, request).await
    }

    async fn remove_archived(
        &self,
        request: Request<crate::proto::RemoveArchivedRequest>,
    ) -> Result<Response<crate::proto::RemoveArchivedReply>, Status> {
        super::archive::remove(&self.shared, request).await
    }

    async fn import_catalogs(
        &self,
        request: Request<crate::proto::ImportCatalogsRequest>,
    ) -> Result<Response<crate::proto::ImportCatalogsReply>, Status> {
        super::catalog::import_catalogs(&self.shared, request).await
    }

    async fn export_catalog(
        &self,
        request: Request<crate::proto::ExportCatalogRequest>,
    ) -> Result<Response<crate::proto::ExportCatalogReply>, Status> {
        super::catalog::export_catalog(&self.shared, request).await
    }

    async fn catalog_history(
        &self,
        request: Request<crate::proto::CatalogHistoryRequest>,
    ) -> Result<Response<crate::proto::CatalogHistoryReply>, Status> {
        super::catalog::catalog_history(&self.shared, request).await
    }

    async fn list_linkage_problems(
        &self,
        request: Request<crate::proto::ListLinkageProblemsRequest>,
    ) -> Result<Response<crate::proto::ListLinkageProblemsReply>, Status> {
        super::catalog::linkage_problems(&self.shared, request).await
    }

    async fn relink_case(
        &self,
        request: Request<crate::proto::RelinkCaseRequest>,
    ) -> Result<Response<crate::proto::CaseReply>, Status> {
        super::catalog::relink_case(&self.shared, request).await
    }

    async fn get_enterprise_profile(
        &self,
        request: Request<crate::proto::GetEnterpriseProfileRequest>,
    ) -> Result<Response<crate::proto::EnterpriseProfile>, Status> {
        super::catalog::enterprise_profile(&self.shared, request).await
    }

    async fn create_spot_check_plan(
        &self,
        request: Request<crate::proto::CreateSpotCheckPlanRequest>,
    ) -> Result<Response<crate::proto::SpotCheckPlan>, Status> {
        super::catalog::create_plan(&self.shared, request).await
    }

    async fn list_spot_check_plans(
        &self,
        request: Request<crate::proto::ListSpotCheckPlansRequest>,
    ) -> Result<Response<crate::proto::ListSpotCheckPlansReply>, Status> {
        super::catalog::list_plans(&self.shared, request).await
    }

    async fn list_spot_check_runs(
        &self,
        request: Request<crate::proto::ListSpotCheckRunsRequest>,
    ) -> Result<Response<crate::proto::ListSpotCheckRunsReply>, Status> {
        super::catalog::list_runs(&self.shared, request).await
    }

    async fn end_spot_check_plan(
        &self,
        request: Request<crate::proto::EndSpotCheckPlanRequest>,
    ) -> Result<Response<crate::proto::SpotCheckPlan>, Status> {
        super::catalog::end_plan(&self.shared, request).await
    }

    async fn get_workflow(
        &self,
        request: Request<crate::proto::GetWorkflowRequest>,
    ) -> Result<Response<crate::proto::Workflow>, Status> {
        authorize(&self.shared, &request, Right::ReadWorkflows)?;
        let r = request.get_ref();
        if r.name.is_empty() {
            return Err(invalid("name", "required: a workflow's name (a case's or task's `workflow`)"));
        }
        let registry = self.shared.registry();
        let def = match r.version {
            0 => registry.latest(&r.name),
            v => registry.get(&r.name, v),
        };
        let Some(def) = def else {
            // Echo a bounded, quoted rendering only: the name is the caller's text.
            let shown: String = r.name.chars().take(64).collect();
            let what = match r.version {
                0 => format!("{shown:?}"),
                v => format!("{shown:?} version {v}"),
            };
            return Err(status::not_found("workflow", &what));
        };
        Ok(Response::new(view::workflow(def)))
    }
}
